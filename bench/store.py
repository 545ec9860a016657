"""``python -m bench store [--compare memcached] [--quick]``: the store's memcached protocol, side by side.

Starts CoreMQ as ``run_coremq`` serves it (``--no-web --memcached-port 0``)
and, with ``--compare memcached``, a real ``memcached`` (its defaults: 4
threads, ``-m 1024`` so that nothing is evicted) on free ports, then measures
in the same run, interleaved:

- get and set ops/s with 1 and 50 concurrent clients, each pipelining
  ``--depth`` (100) requests per write and reading every answer before the
  next write, for values of 100 B and 10 KB over 1,000 keys;
- memory per item: the server's RSS growth over 100,000 sets of 100-byte
  values, divided by 100,000 (and, for CoreMQ, the bytes the store counts
  against ``MEMCACHED_MEMORY``).

Every answer is checked (each set answered ``STORED``, each get one
``VALUE``): a wrong count fails the run. Prints a table with CoreMQ ÷
memcached and writes ``bench/results/store[-quick].json``. Exits 1 if a run
failed or the ratio with 50 clients is under the target (0.3).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import psutil

from .net import new_event_loop

__all__ = ["main"]

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
MEMCACHED = "/usr/bin/memcached"
TARGET_RATIO = 0.3
KEYS = 1000
SIZES = (100, 10 * 1024)
CLIENTS = (1, 50)
MEMORY_ITEMS = 100_000


class BenchFailed(Exception):
    """A run got answers it did not expect."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server process answering the memcached protocol on 127.0.0.1:port."""

    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.process = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.port = 0

    def wait_port(self, pattern: str | None, port: int = 0, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        if pattern is not None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                found = re.search(pattern, line)
                if found:
                    self.port = int(found.group(1))
                    break
                if time.monotonic() > deadline:
                    break
            if not self.port:
                raise BenchFailed(f"{self.name} did not start")
        else:
            self.port = port
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise BenchFailed(f"{self.name} does not answer on {self.port}")

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_coremq() -> Server:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "PYTHONUNBUFFERED": "1",
           "COREMQ_DATABASE": os.path.join(tempfile.mkdtemp(prefix="coremq-bench-store-"), "db.sqlite3")}
    server = Server("coremq", [sys.executable, "manage.py", "run_coremq", "--port", "0", "--no-web",
                               "--memcached-port", "0"], env)
    server.wait_port(r"memcached protocol\) listening on \S+:(\d+)")
    return server


def start_memcached() -> Server:
    port = _free_port()
    args = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    server = Server("memcached", args)
    server.wait_port(None, port)
    return server


async def _client(port: int, batch: bytes, expect: bytes, count: int, stop_at: float) -> int:
    """Send ``batch`` (``count`` requests), read until ``count`` × ``expect``; repeat until ``stop_at``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
    done = 0
    try:
        while True:  # one batch at least, however late the client starts
            writer.write(batch)
            seen, tail = 0, b""
            while seen < count:
                data = await reader.read(1 << 20)
                if not data:
                    raise BenchFailed("the server closed the connection")
                chunk = tail + data
                seen += chunk.count(expect)
                tail = chunk[-(len(expect) - 1):]
            if seen != count:
                raise BenchFailed(f"{seen} answers {expect!r} to {count} requests")
            done += count
            if time.monotonic() >= stop_at:
                break
    finally:
        writer.close()
    return done


def _batch(op: str, size: int, depth: int, offset: int) -> tuple[bytes, bytes]:
    value = b"v" * size
    keys = [b"bench:%04d" % ((offset + i) % KEYS) for i in range(depth)]
    if op == "set":
        return b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, size, value) for k in keys), b"STORED\r\n"
    return b"".join(b"get %s\r\n" % k for k in keys), b"VALUE "  # a miss would answer END alone


async def _measure(port: int, op: str, size: int, clients: int, depth: int, duration: float) -> float:
    if op == "get":  # every key holds a value of this size
        batch = _batch("set", size, KEYS, 0)[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        writer.write(batch)
        seen = b""
        while seen.count(b"STORED\r\n") < KEYS:
            seen += await reader.read(1 << 20)
        writer.close()
    stop_at = time.monotonic() + duration
    start = time.monotonic()
    counts = await asyncio.gather(*(
        _client(port, *_batch(op, size, depth, index * depth), depth, stop_at) for index in range(clients)))
    return sum(counts) / (time.monotonic() - start)


async def _memory_per_item(server: Server) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=1 << 22)
    before = server.rss()
    value = b"m" * 100
    for start in range(0, MEMORY_ITEMS, 1000):
        writer.write(b"".join(b"set item:%06d 0 0 100 noreply\r\n%s\r\n" % (i, value)
                              for i in range(start, start + 1000)))
        await writer.drain()
    writer.write(b"stats\r\n")
    stats = b""
    while not stats.endswith(b"END\r\n"):
        stats += await reader.read(1 << 16)
    writer.close()
    time.sleep(0.5)
    figures = dict(re.findall(rb"STAT (\S+) (\S+)\r\n", stats))
    items = int(figures.get(b"curr_items", 0))
    return {"items": items, "rss_per_item": (server.rss() - before) / MEMORY_ITEMS,
            "counted_bytes_per_item": int(figures.get(b"bytes", 0)) / max(items, 1)}


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.duration or (0.4 if args.quick else 2.0)
    runs = args.runs or (1 if args.quick else 3)
    servers = {"coremq": start_coremq()}
    if "memcached" in args.compare:
        servers["memcached"] = start_memcached()
    results: dict[str, Any] = {"meta": {"command": "python -m bench store " + " ".join(sys.argv[2:]),
                                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                                        "duration": duration, "runs": runs, "depth": args.depth},
                               "ops": [], "memory": {}}
    try:
        for op in ("set", "get"):
            for size in SIZES:
                for clients in CLIENTS:
                    row: dict[str, Any] = {"op": op, "size": size, "clients": clients}
                    samples: dict[str, list[float]] = {name: [] for name in servers}
                    for _ in range(runs):  # interleaved: each target in turn
                        for name, server in servers.items():
                            samples[name].append(await _measure(server.port, op, size, clients, args.depth,
                                                                duration))
                    for name, values in samples.items():
                        row[name] = statistics.median(values)
                    print(f"  {op} {size} B x{clients}: " + ", ".join(f"{n} {row[n]:,.0f}/s" for n in servers),
                          file=sys.stderr, flush=True)
                    results["ops"].append(row)
        for name, server in servers.items():  # fresh keys: 100,000 more items in each
            results["memory"][name] = await _memory_per_item(server)
    finally:
        for server in servers.values():
            server.stop()
    return results


def render(results: dict[str, Any]) -> str:
    names = [n for n in ("coremq", "memcached") if results["ops"] and n in results["ops"][0]]
    lines = ["op   value   clients " + "".join(f"{n:>14}" for n in names) + ("   ratio" if len(names) > 1 else "")]
    for row in results["ops"]:
        line = f"{row['op']:<4} {row['size']:>6} B {row['clients']:>7} " + "".join(
            f"{row[n]:>12,.0f}/s" for n in names)
        if len(names) > 1:
            line += f"   {row['coremq'] / row['memcached']:.2f}x"
        lines.append(line)
    for name, memory in results["memory"].items():
        lines.append(f"memory per item at {memory['items']:,} items, {name}: {memory['rss_per_item']:.0f} B RSS "
                     f"(the server counts {memory['counted_bytes_per_item']:.0f} B per item, averaged over all it holds)")
    return "\n".join(lines)


def check(results: dict[str, Any]) -> list[str]:
    """The rows with 50 clients under the target ratio."""
    return [f"{row['op']} {row['size']} B x{row['clients']}: {row['coremq'] / row['memcached']:.2f}x"
            for row in results["ops"]
            if "memcached" in row and row["clients"] == max(CLIENTS)
            and row["coremq"] < TARGET_RATIO * row["memcached"]]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench store", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--compare", default="", help="memcached: also run a real memcached (/usr/bin/memcached)")
    p.add_argument("--quick", action="store_true", help="one short run of each")
    p.add_argument("--runs", type=int, help="repetitions, medians reported (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds per run (default 2, quick 0.4)")
    p.add_argument("--depth", type=int, default=100, help="requests each client pipelines per write (100)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if "memcached" in args.compare and not os.path.exists(MEMCACHED):
        raise SystemExit(f"{MEMCACHED} is missing: apt-get install memcached")
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            results = runner.run(_run(args))
    except BenchFailed as exc:
        print(f"BENCHMARK FAILED: {exc}", file=sys.stderr)
        return 1
    results["below_target"] = check(results)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / ("store-quick.json" if args.quick else "store.json")
    path.write_text(json.dumps(results, indent=1))
    print(render(results))
    print(f"\nwritten: {path}")
    if results["below_target"]:
        print(f"under {TARGET_RATIO}x memcached with {max(CLIENTS)} clients: {', '.join(results['below_target'])}",
              file=sys.stderr)
        return 1
    return 0
