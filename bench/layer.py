"""``python -m bench layer``: the Channels layer on CoreMQ against channels_redis' RedisChannelLayer, in one run.

Both layers are driven by the same code in this process, against servers
started here: CoreMQ as an operator runs it (:class:`~bench.coremq_process.CoreMQProcess`,
``run_coremq --no-web``) and a ``redis-server`` of its own on a free port.
Runs alternate between the two layers, each on fresh layer instances:

- **group_send to N channels** (``--members``, 100): one process holds N
  process-local channels in a group and receives on all of them (as a daphne
  process of N consumers does); another layer instance sends ``group_send`` as
  fast as a window of ``--window`` unreceived sends allows, for ``--duration``
  seconds. Every channel must receive every message, once, in order.
- **send/receive round trips**: ping-pong between two layer instances over
  process-local channels (and, as a second row, over normal channels): A sends
  to B's channel, B receives and sends back, A receives. Sequential, so the
  rate is 1 / latency.

Figures are medians over ``--runs``; the CPU of the server (broker or Redis)
and of this process is reported beside them. Writes ``bench/results/layer.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

from .coremq_process import REPO, CoreMQProcess
from .net import new_event_loop

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("coremq", "redis")
LABELS = {"coremq": "CoreMQChannelLayer", "redis": "channels_redis RedisChannelLayer"}
CAPACITY = 100_000  # room for the window: the benchmark measures speed, not drops


class RedisServer:
    """``redis-server`` on a free port, no persistence."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="bench-layer-redis-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        server = shutil.which("redis-server")
        if server is None:
            raise SystemExit("bench layer needs redis-server (Debian: apt-get install redis-server)")
        self.process = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.directory],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def layer_factory(backend: str, port: int) -> Callable[[], Any]:
    prefix = f"bench{os.urandom(3).hex()}"
    if backend == "coremq":
        from coremq_broker.layers import CoreMQChannelLayer

        return lambda: CoreMQChannelLayer(hosts=[f"coremq://127.0.0.1:{port}"], prefix=prefix, capacity=CAPACITY)
    from channels_redis.core import RedisChannelLayer

    return lambda: RedisChannelLayer(hosts=[f"redis://127.0.0.1:{port}/0"], prefix=prefix, capacity=CAPACITY)


class Cpu:
    """CPU seconds of the server process and of this one between start and :meth:`shares`."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.start = (self._server(), self._own(), time.perf_counter())

    def _server(self) -> float:
        times = self.server.cpu_times()
        return times.user + times.system

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start[2]
        return {"server_cpu": round((self._server() - self.start[0]) / wall, 2),
                "client_cpu": round((self._own() - self.start[1]) / wall, 2)}


async def _close(*layers: Any) -> None:
    for layer in layers:
        await layer.flush()


async def group_fanout(make: Callable[[], Any], server_pid: int, members: int, duration: float,
                       window: int) -> dict[str, Any]:
    """group_send as fast as the window allows to a group of ``members`` local channels of one receiving layer."""
    sender, receiver = make(), make()
    channels = [await receiver.new_channel() for _ in range(members)]
    for channel in channels:
        await receiver.group_add("bench-group", channel)
    delivered = 0
    errors: list[str] = []
    progress = asyncio.Event()
    last_delivery = 0.0

    async def drain(channel: str) -> None:
        nonlocal delivered, last_delivery
        expected = 0
        while True:
            message = await receiver.receive(channel)
            if message["n"] != expected:
                errors.append(f"{channel} expected {expected}, got {message['n']}")
            expected = message["n"] + 1
            delivered += 1
            last_delivery = time.perf_counter()
            progress.set()

    tasks = [asyncio.ensure_future(drain(channel)) for channel in channels]
    await asyncio.sleep(0.2)
    cpu = Cpu(server_pid)
    sent = 0
    start = time.perf_counter()
    while time.perf_counter() - start < duration and not errors:
        while sent * members - delivered > window * members:
            progress.clear()
            await asyncio.wait_for(progress.wait(), 30)
        await sender.group_send("bench-group", {"type": "bench.message", "n": sent, "text": "x" * 64})
        sent += 1
    deadline = time.perf_counter() + 30
    while delivered < sent * members and time.perf_counter() < deadline:
        progress.clear()
        try:
            await asyncio.wait_for(progress.wait(), 5)
        except TimeoutError:
            break
    shares = cpu.shares()
    elapsed = max(last_delivery - start, 1e-9)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _close(sender, receiver)
    lost = sent * members - delivered
    return {"group_sends": sent, "deliveries": delivered, "lost": lost, "seconds": round(elapsed, 3),
            "group_sends_per_s": round(sent / elapsed), "deliveries_per_s": round(delivered / elapsed),
            **shares, "ok": lost == 0 and not errors, "errors": errors[:3]}


async def round_trips(make: Callable[[], Any], server_pid: int, duration: float, local: bool) -> dict[str, Any]:
    """Ping-pong between two layers: A sends to B's channel, B answers on A's; sequential round trips."""
    a, b = make(), make()
    if local:
        to_a, to_b = await a.new_channel(), await b.new_channel()
    else:
        suffix = os.urandom(3).hex()
        to_a, to_b = f"bench.ping.{suffix}", f"bench.pong.{suffix}"

    async def echo() -> None:
        while True:
            message = await b.receive(to_b)
            await b.send(to_a, message)

    task = asyncio.ensure_future(echo())
    await a.send(to_b, {"type": "warm", "n": -1})
    await a.receive(to_a)
    cpu = Cpu(server_pid)
    count, latencies = 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < duration:
        began = time.perf_counter()
        await a.send(to_b, {"type": "ping", "n": count})
        answer = await asyncio.wait_for(a.receive(to_a), 30)
        latencies.append(time.perf_counter() - began)
        assert answer["n"] == count, answer
        count += 1
    elapsed = time.perf_counter() - start
    shares = cpu.shares()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await _close(a, b)
    latencies.sort()
    return {"round_trips": count, "seconds": round(elapsed, 3), "round_trips_per_s": round(count / elapsed),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
            **shares, "ok": True}


def _median_row(rows: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """The run with the median of the first key, with every run's figures of that key beside it."""
    ordered = sorted(rows, key=lambda row: row[keys[0]])
    row = dict(ordered[len(ordered) // 2])
    row["runs"] = [r[keys[0]] for r in rows]
    row["ok"] = all(r["ok"] for r in rows)
    return row


async def run_all(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    results: dict[str, Any] = {"settings": {"members": args.members, "duration": args.duration,
                                            "window": args.window, "runs": args.runs},
                               "machine": {"cpus": os.cpu_count()}, "layers": {}}
    redis = RedisServer()
    try:
        with CoreMQProcess("auto") as broker:
            ports = {"coremq": (broker.port, broker.pid), "redis": (redis.port, redis.process.pid)}
            raw: dict[str, dict[str, list]] = {b: {"group": [], "local": [], "normal": []} for b in BACKENDS}
            for run in range(args.runs):
                for backend in BACKENDS:
                    port, pid = ports[backend]
                    make = layer_factory(backend, port)
                    group = await group_fanout(make, pid, args.members, args.duration, args.window)
                    log(f"run {run + 1} {backend}: group_send {group}")
                    raw[backend]["group"].append(group)
                    local = await round_trips(make, pid, args.duration, local=True)
                    log(f"run {run + 1} {backend}: round trips (process-local) {local}")
                    raw[backend]["local"].append(local)
                    normal = await round_trips(make, pid, args.duration, local=False)
                    log(f"run {run + 1} {backend}: round trips (normal channels) {normal}")
                    raw[backend]["normal"].append(normal)
            for backend in BACKENDS:
                results["layers"][backend] = {
                    "label": LABELS[backend],
                    "group_send": _median_row(raw[backend]["group"], ["deliveries_per_s"]),
                    "round_trips_local": _median_row(raw[backend]["local"], ["round_trips_per_s"]),
                    "round_trips_normal": _median_row(raw[backend]["normal"], ["round_trips_per_s"]),
                }
    finally:
        redis.stop()
    ours, theirs = results["layers"]["coremq"], results["layers"]["redis"]
    results["ratios"] = {
        key: round(ours[key][field] / theirs[key][field], 2) if theirs[key][field] else None
        for key, field in (("group_send", "deliveries_per_s"), ("round_trips_local", "round_trips_per_s"),
                           ("round_trips_normal", "round_trips_per_s"))}
    return results


def render(results: dict[str, Any]) -> str:
    s = results["settings"]
    lines = [f"group_send to {s['members']} channels of one process ({s['duration']} s, window {s['window']}, "
             f"median of {s['runs']}); CPU: cores used by the server and by this process",
             f"{'layer':34} {'group_send/s':>12} {'deliveries/s':>13} {'lost':>5} {'server CPU':>10} {'client CPU':>10}"]
    for entry in results["layers"].values():
        row = entry["group_send"]
        lines.append(f"{entry['label']:34} {row['group_sends_per_s']:>12,} {row['deliveries_per_s']:>13,} "
                     f"{row['lost']:>5} {row['server_cpu']:>10} {row['client_cpu']:>10}"
                     + ("" if row["ok"] else "  FAILED"))
    for key, what in (("round_trips_local", "process-local channels"), ("round_trips_normal", "normal channels")):
        lines += ["", f"send/receive round trips, {what}",
                  f"{'layer':34} {'round trips/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'server CPU':>10} {'client CPU':>10}"]
        for entry in results["layers"].values():
            row = entry[key]
            lines.append(f"{entry['label']:34} {row['round_trips_per_s']:>13,} {row['p50_ms']:>8} {row['p99_ms']:>8} "
                         f"{row['server_cpu']:>10} {row['client_cpu']:>10}")
    r = results["ratios"]
    lines += ["", f"CoreMQ / channels_redis: group_send deliveries x{r['group_send']}, round trips x"
                  f"{r['round_trips_local']} (process-local), x{r['round_trips_normal']} (normal channels)"]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench layer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=100, help="channels in the group (default %(default)s)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default %(default)s)")
    p.add_argument("--window", type=int, default=50, help="group_sends not yet received by every member, at most")
    p.add_argument("--runs", type=int, default=3, help="runs per layer; medians are reported (default %(default)s)")
    p.add_argument("--quick", action="store_true", help="one short run (for tests)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.duration = 1, 0.5
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coremq_project.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        results = runner.run(run_all(args, log))
    results["command"] = "python -m bench layer " + " ".join(sys.argv[2:] if argv is None else argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / "layer.json"
    path.write_text(json.dumps(results, indent=1))
    print(render(results))
    print(f"\nwritten: {path}")
    failed = [b for b, entry in results["layers"].items() if not entry["group_send"]["ok"]]
    if failed:
        print(f"BENCHMARK FAILED for {', '.join(failed)}: a group message was lost or reordered", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
