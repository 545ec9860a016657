"""``python -m bench websocket``: WebSocket fan-out, CoreMQ's bridge against Channels' ``group_send``.

One publisher and N subscribers, all speaking the browser protocol of
``/ws/coremq/`` through the same load generator (:mod:`bench.wsclient`),
against two servers started here:

- **CoreMQ**: ``manage.py run_coremq --port 0 --web-port 0``, one process
  (broker, daphne and the in-process bridge on one loop); ``--coremq remote``
  adds a separate ``daphne coremq_project.asgi:application`` whose bridge
  reaches the broker over TCP (the subscribers then connect to that daphne);
- **Channels**: ``daphne bench.channels_peer:application``, a plain consumer
  that fans out with ``group_send`` over ``channels_redis`` on this machine's
  Redis (127.0.0.1:6379).

Two measurements per server:

- **Throughput** (each N of ``--subscribers``): the publisher sends as fast as
  flow control allows (``--window`` unanswered publishes; subscribers at most
  ``--budget`` deliveries behind in all) for ``--duration`` seconds; the rate
  is deliveries / (last delivery - first publish). Every subscriber must get
  every message, once, in order, or the run fails.
- **Latency** (``--latency-subscribers``): ``--rate`` publishes per second, each
  stamped with the generator's clock when written; the latency of a delivery is
  its arrival time minus that stamp (same process, same clock).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import psutil

from .measure import percentile
from .net import new_event_loop
from .targets import listener_pid
from .wsclient import WebSocket, connect

__all__ = ["main", "Settings"]

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PATH = "/ws/coremq/"
HOST = "127.0.0.1"
_SEQ = re.compile(rb'"seq": ?(\d+)')
_PAD = "x" * 64  # a message of about 100 bytes, as in the other benchmarks


@dataclass(frozen=True)
class Settings:
    subscribers: tuple[int, ...] = (100, 1000)
    duration: float = 5.0
    window: int = 100
    budget: int = 20_000
    latency_subscribers: int = 100
    rate: float = 10.0
    latency_duration: float = 10.0
    stall: float = 30.0
    coremq: str = "in-process"


# -- one run ---------------------------------------------------------------------------

class Run:
    """The shared counters of one run: what was published when, and what arrived."""

    def __init__(self, subscribers: int, *, record_latency: bool) -> None:
        self.subscribers = subscribers
        self.sent_at: list[float] = []
        self.delivered = 0
        self.last_delivery = 0.0
        self.latencies: list[float] | None = [] if record_latency else None
        self.acked = 0
        self.errors: list[str] = []
        self._wake: asyncio.Future[None] | None = None
        self._wake_at = 0

    def wait_for_deliveries(self, count: int) -> asyncio.Future[None]:
        self._wake = asyncio.get_running_loop().create_future()
        self._wake_at = count
        if self.delivered >= count:
            self._wake.set_result(None)
        return self._wake

    def progress(self) -> None:
        wake = self._wake
        if wake is not None and self.delivered >= self._wake_at and not wake.done():
            wake.set_result(None)


class Subscriber:
    """Checks that messages 0, 1, 2... arrive once and in order; counts them into the run."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.expected = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.socket: WebSocket | None = None

    def on_text(self, payload: bytes) -> None:
        match = _SEQ.search(payload)
        if match is None:
            if not self.ready.done() and b'"subscribed"' in payload:
                self.ready.set_result(None)
            elif b'"error"' in payload:
                self.run.errors.append(payload.decode(errors="replace"))
            return
        now = time.perf_counter()
        seq = int(match.group(1))
        run = self.run
        if seq != self.expected:
            run.errors.append(f"a subscriber expected message {self.expected} and got {seq}")
        self.expected = seq + 1
        run.delivered += 1
        run.last_delivery = now
        if run.latencies is not None:
            run.latencies.append(now - run.sent_at[seq])
        run.progress()


class Publisher:
    def __init__(self, run: Run, queue: str) -> None:
        self.run = run
        self.queue = queue
        self.socket: WebSocket | None = None
        self.answered: asyncio.Future[None] | None = None

    def frame(self, seq: int) -> bytes:
        return (b'{"action":"publish","queue":"%s","message":{"seq":%d,"pad":"%s"},"ref":%d}'
                % (self.queue.encode(), seq, _PAD.encode(), seq))

    def on_text(self, payload: bytes) -> None:
        if b'"published"' in payload:
            self.run.acked += 1
            if self.answered is not None and not self.answered.done():
                self.answered.set_result(None)
        elif b'"error"' in payload:
            self.run.errors.append(payload.decode(errors="replace"))


async def open_clients(port: int, count: int, run: Run) -> tuple[list[Subscriber], Publisher]:
    queue = f"bench.ws.{os.urandom(4).hex()}"
    subscribers = [Subscriber(run) for _ in range(count)]
    for start in range(0, count, 50):  # connect in batches, as a crowd of pages would
        batch = subscribers[start:start + 50]
        sockets = await asyncio.gather(*(connect(HOST, port, f"{PATH}?queues={queue}", s.on_text) for s in batch))
        for subscriber, ws in zip(batch, sockets):
            subscriber.socket = ws
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in batch)), 120)
    publisher = Publisher(run, queue)
    publisher.socket = await connect(HOST, port, PATH, publisher.on_text)
    return subscribers, publisher


def close_clients(subscribers: list[Subscriber], publisher: Publisher) -> None:
    for client in [*subscribers, publisher]:
        if client.socket is not None:
            client.socket.close()


async def wait_delivered(run: Run, total: int, stall: float) -> None:
    """Wait until ``total`` deliveries arrived; fail the run if progress stops for ``stall`` seconds."""
    while run.delivered < total:
        before = run.delivered
        try:
            await asyncio.wait_for(asyncio.shield(run.wait_for_deliveries(total)), stall)
        except TimeoutError:
            if run.delivered == before:
                run.errors.append(f"stalled: {total - run.delivered} of {total} deliveries never arrived")
                return


async def throughput(server: "Server", count: int, settings: Settings) -> dict[str, Any]:
    run = Run(count, record_latency=False)
    subscribers, publisher = await open_clients(server.port, count, run)
    try:
        await asyncio.sleep(0.5)  # let the connection burst settle
        cpu = server.cpu_meter()
        own = _own_cpu()
        published = 0
        start = time.perf_counter()
        deadline = start + settings.duration
        while time.perf_counter() < deadline and not run.errors:
            in_flight = published - run.acked
            behind = published * count - run.delivered
            room = min(settings.window - in_flight, (settings.budget - behind) // count)
            if room <= 0:
                publisher.answered = asyncio.get_running_loop().create_future()
                waits = {publisher.answered, run.wait_for_deliveries(run.delivered + max(count, settings.budget // 4))}
                await asyncio.wait(waits, timeout=settings.stall, return_when=asyncio.FIRST_COMPLETED)
                continue
            frames = [publisher.frame(seq) for seq in range(published, published + min(room, 50))]
            now = time.perf_counter()
            run.sent_at.extend([now] * len(frames))
            publisher.socket.send_many(frames)  # type: ignore[union-attr]
            published += len(frames)
            await asyncio.sleep(0)
        await wait_delivered(run, published * count, settings.stall)
        elapsed = run.last_delivery - start
        server_cpu = cpu()
        generator_cpu = _own_cpu() - own
    finally:
        close_clients(subscribers, publisher)
    lost = published * count - run.delivered
    return {
        "subscribers": count, "published": published, "delivered": run.delivered, "lost": lost,
        "seconds": round(elapsed, 3), "deliveries_per_s": round(run.delivered / elapsed) if elapsed > 0 else 0,
        "server_cpu": round(server_cpu / elapsed, 2) if elapsed > 0 else None,
        "generator_cpu": round(generator_cpu / elapsed, 2) if elapsed > 0 else None,
        "ok": not run.errors and lost == 0, "errors": run.errors[:5],
    }


async def latency(server: "Server", count: int, settings: Settings) -> dict[str, Any]:
    run = Run(count, record_latency=True)
    subscribers, publisher = await open_clients(server.port, count, run)
    try:
        await asyncio.sleep(0.5)
        total = max(1, int(settings.rate * settings.latency_duration))
        interval = 1.0 / settings.rate
        next_at = time.perf_counter()
        for seq in range(total):
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            run.sent_at.append(time.perf_counter())
            publisher.socket.send_text(publisher.frame(seq))  # type: ignore[union-attr]
            next_at += interval
        await wait_delivered(run, total * count, settings.stall)
    finally:
        close_clients(subscribers, publisher)
    samples = sorted(run.latencies or [])
    ms = {name: round(percentile(samples, q) * 1000, 3) for name, q in
          (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100))}
    lost = total * count - run.delivered
    return {"subscribers": count, "rate": settings.rate, "published": total, "samples": len(samples),
            "latency_ms": ms, "lost": lost, "ok": not run.errors and lost == 0, "errors": run.errors[:5]}


# -- the servers -----------------------------------------------------------------------

class Server:
    """A server process under test (and any helper whose CPU counts with it, such as Redis)."""

    def __init__(self, name: str, label: str, port: int, pids: list[int], processes: list[subprocess.Popen]) -> None:
        self.name, self.label, self.port = name, label, port
        self.pids, self.processes = pids, processes

    def cpu_meter(self) -> Any:
        processes = [psutil.Process(pid) for pid in self.pids]
        before = sum(_cpu(p) for p in processes)
        return lambda: sum(_cpu(p) for p in processes) - before

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _raise_limits() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_raise_limits,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def _wait_for(condition: Any, what: str, process: subprocess.Popen, log: Path, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited {process.returncode}; see {log}")
        time.sleep(0.05)
    raise RuntimeError(f"{what}: not ready within {timeout}s; see {log}")


_STARTS = itertools.count(1)  # each server start logs to a file of its own


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def start_coremq(mode: str, workdir: Path) -> Server:
    """``run_coremq`` on free ports (a fresh, migrated database); with ``remote``, plus a daphne of the project."""
    env = {"COREMQ_DATABASE": str(workdir / "db.sqlite3"), "DJANGO_SETTINGS_MODULE": "coremq_project.settings"}
    if not (workdir / "db.sqlite3").exists():
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, check=True,
                       env={**os.environ, **env})
    log = workdir / f"coremq-{next(_STARTS)}.log"
    broker_port, web_port = _free_port(), _free_port()
    process = _spawn([sys.executable, "manage.py", "run_coremq", "--port", str(broker_port),
                      "--web-port", str(web_port)], log, env)
    _wait_for(lambda: b"CoreMQ web app on" in log.read_bytes(), "run_coremq", process, log)
    if mode == "in-process":
        return Server("coremq", "CoreMQ (run_coremq, in-process bridge)", web_port, [process.pid], [process])
    settings = workdir / "bench_coremq_settings.py"
    settings.write_text("from coremq_project.settings import *  # noqa\n"
                        f"COREMQ = {{**COREMQ, 'PORT': {broker_port}}}\n")
    daphne_port = _free_port()
    daphne = _spawn([sys.executable, "-m", "daphne", "-b", HOST, "-p", str(daphne_port),
                     "coremq_project.asgi:application"], daphne_log := workdir / f"coremq-daphne-{next(_STARTS)}.log",
                    {**env, "DJANGO_SETTINGS_MODULE": "bench_coremq_settings",
                     "PYTHONPATH": os.pathsep.join([str(workdir), str(REPO)])})
    _wait_for(lambda: _accepts(daphne_port), "daphne (CoreMQ, remote bridge)", daphne, daphne_log)
    return Server("coremq-remote", "CoreMQ (separate daphne, remote bridge)", daphne_port,
                  [daphne.pid, process.pid], [daphne, process])


def start_channels(workdir: Path) -> Server:
    """daphne serving :mod:`bench.channels_peer`, with Redis's CPU counted too."""
    redis_pid = listener_pid(6379)
    if redis_pid is None or not _accepts(6379):
        raise RuntimeError("Redis is not answering on 127.0.0.1:6379: the Channels peer needs it")
    log = workdir / f"channels-{next(_STARTS)}.log"
    port = _free_port()
    process = _spawn([sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "bench.channels_peer:application"],
                     log)
    _wait_for(lambda: _accepts(port), "daphne (Channels peer)", process, log)
    return Server("channels", "Channels group_send (channels_redis)", port, [process.pid, redis_pid], [process])


# -- the command -------------------------------------------------------------------------

async def run_all(settings: Settings, log: Any) -> dict[str, Any]:
    """Every measurement against a freshly started server, so that no run inherits another's backlog."""
    results: dict[str, Any] = {"settings": asdict(settings), "machine": {"cpus": os.cpu_count()}, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        workdir = Path(tmp)
        starters: dict[str, Any] = {}
        if settings.coremq in ("in-process", "both"):
            starters["coremq"] = lambda: start_coremq("in-process", workdir)
        if settings.coremq in ("remote", "both"):
            starters["coremq-remote"] = lambda: start_coremq("remote", workdir)
        starters["channels"] = lambda: start_channels(workdir)
        for name, start in starters.items():
            entry: dict[str, Any] = {"throughput": [], "latency": None}
            for count in settings.subscribers:
                with ExitStack() as stack:
                    server = start()
                    stack.callback(server.stop)
                    entry["label"] = server.label
                    log(f"{server.label}: throughput, {count} subscribers")
                    entry["throughput"].append(await throughput(server, count, settings))
                    log(f"  {entry['throughput'][-1]}")
            with ExitStack() as stack:
                server = start()
                stack.callback(server.stop)
                entry["label"] = server.label
                log(f"{server.label}: latency, {settings.latency_subscribers} subscribers at {settings.rate}/s")
                entry["latency"] = await latency(server, settings.latency_subscribers, settings)
                log(f"  {entry['latency']}")
            results["servers"][name] = entry
            if not all(r["ok"] for r in entry["throughput"]) or not entry["latency"]["ok"]:
                logs = {path.name: path.read_text(errors="replace")[-2000:] for path in workdir.glob("*.log")}
                results.setdefault("logs", {}).update(logs)
    results["comparison"] = compare(results)
    return results


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """CoreMQ's figures as multiples of Channels': throughput per N, and the p99 latency ratio."""
    servers = results["servers"]
    channels = servers.get("channels")
    out: dict[str, Any] = {}
    if channels is None:
        return out
    for name, entry in servers.items():
        if name == "channels":
            continue
        ratios = {}
        for mine, theirs in zip(entry["throughput"], channels["throughput"]):
            if theirs["deliveries_per_s"]:
                ratios[str(mine["subscribers"])] = round(mine["deliveries_per_s"] / theirs["deliveries_per_s"], 1)
        p99, their_p99 = entry["latency"]["latency_ms"]["p99"], channels["latency"]["latency_ms"]["p99"]
        out[name] = {"throughput_x": ratios, "p99_fraction_of_channels": round(p99 / their_p99, 3) if their_p99 else None}
    return out


def render(results: dict[str, Any]) -> str:
    lines = [f"{'server':44} {'N':>5} {'deliveries/s':>13} {'lost':>5} {'server CPU':>10} {'gen CPU':>8}"]
    for entry in results["servers"].values():
        for row in entry["throughput"]:
            lines.append(f"{entry['label']:44} {row['subscribers']:>5} {row['deliveries_per_s']:>13,} {row['lost']:>5} "
                         f"{row['server_cpu']!s:>10} {row['generator_cpu']!s:>8}" + ("" if row["ok"] else "  FAILED"))
    lines.append("")
    lines.append(f"{'server':44} {'N':>5} {'rate/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}")
    for entry in results["servers"].values():
        row = entry["latency"]
        ms = row["latency_ms"]
        lines.append(f"{entry['label']:44} {row['subscribers']:>5} {row['rate']:>7} {ms['p50']:>8} {ms['p90']:>8} "
                     f"{ms['p99']:>8} {ms['p99.9']:>9} {ms['max']:>8}" + ("" if row["ok"] else "  FAILED"))
    for name, ratio in results.get("comparison", {}).items():
        lines.append("")
        lines.append(f"{name} vs Channels: throughput x{ratio['throughput_x']}, "
                     f"p99 latency = {ratio['p99_fraction_of_channels']} of Channels'")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m bench websocket", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", default="100,1000", help="comma-separated N for throughput (default %(default)s)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of publishing per throughput run")
    p.add_argument("--window", type=int, default=100, help="unanswered publishes at most")
    p.add_argument("--budget", type=int, default=20_000, help="deliveries in flight at most, all subscribers")
    p.add_argument("--latency-subscribers", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="publishes per second in the latency run "
                                                           "(default: well within Channels' capacity)")
    p.add_argument("--latency-duration", type=float, default=10.0)
    p.add_argument("--coremq", choices=("in-process", "remote", "both"), default="in-process",
                   help="CoreMQ's web side: inside run_coremq, a separate daphne, or both")
    p.add_argument("--quick", action="store_true", help="a short pass: N=10,100, 1 s runs")
    args = p.parse_args(argv)
    if args.quick:
        return Settings(subscribers=(10, 100), duration=1.0, latency_subscribers=10, rate=20, latency_duration=2,
                        coremq=args.coremq)
    return Settings(subscribers=tuple(int(n) for n in args.subscribers.split(",")), duration=args.duration,
                    window=args.window, budget=args.budget, latency_subscribers=args.latency_subscribers,
                    rate=args.rate, latency_duration=args.latency_duration, coremq=args.coremq)


def main(argv: Sequence[str] | None = None, *, results_dir: Path = RESULTS) -> int:
    settings = parse_args(argv)
    _raise_limits()
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        results = runner.run(run_all(settings, log))
    results["command"] = "python -m bench websocket " + " ".join(sys.argv[2:] if argv is None else argv)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "websocket.json"
    path.write_text(json.dumps(results, indent=1))
    print(render(results))
    print(f"\nwritten: {path}")
    failed = [name for name, entry in results["servers"].items()
              if not all(r["ok"] for r in entry["throughput"]) or not entry["latency"]["ok"]]
    if failed:
        print(f"BENCHMARK FAILED for {', '.join(failed)}: a message was lost, reordered or refused", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
