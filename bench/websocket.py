"""``python -m bench websocket``: WebSocket fan-out, CoreMQ's bridge against Channels, Node ``ws`` and ``websockets``.

One publisher and N subscribers, all speaking the browser protocol of
``/ws/coremq/`` (subscribe, publish, message) through the same load generator
(:mod:`bench.wsclient`), against servers started here:

- **CoreMQ**: ``manage.py run_coremq --port 0 --web-port 0``, one process
  (broker, daphne and the in-process bridge on one loop); ``--coremq remote``
  adds a separate ``daphne coremq_project.asgi:application`` whose bridge
  reaches the broker over TCP (the subscribers then connect to that daphne);
- **Channels**: ``daphne bench.channels_peer:application``, a plain consumer
  that fans out with ``group_send`` over ``channels_redis`` on this machine's
  Redis (127.0.0.1:6379);
- **Channels consumer + CoreMQ layer**: the same ``bench.channels_peer``
  consumer under daphne, its ``CHANNEL_LAYERS`` switched to
  ``coremq_broker.layers.CoreMQChannelLayer`` on a ``run_coremq --no-web``
  broker started for it (both processes' CPU counted);
- **Node ws**: ``node bench/node/broadcast.js``, a bare broadcast server on the
  ``ws`` npm package (no history, no auth): the leanest fan-out a user could
  pick instead. ``npm ci`` installs ``ws`` into ``bench/node/node_modules`` on
  first use;
- **websockets**: ``python -m bench.websockets_peer``, a bare Python server on
  the ``websockets`` package's ``broadcast()``.

The generator is one Python process; its CPU is reported beside each
server's (and the rest of the machine's), so that a generator near one core,
which would cap every server alike, shows. It stays cheap: subscribers compare
their bytes with one checked copy of the stream (:mod:`bench.wsverify`), and
their sockets wake them only once several frames wait (``SO_RCVLOWAT``).

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
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

from .measure import percentile
from .net import new_event_loop, source_address
from .profiling import PySpy, top_frames
from .suite import Suite, SuiteSettings, _busy
from .targets import listener_pid
from .wsclient import WebSocket, connect
from .wsverify import SharedStream, StreamFollower, message_seq

__all__ = ["main", "Settings"]

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
NODE_PEER = Path(__file__).resolve().parent / "node"
PEERS = ("channels", "channels-coremq", "node", "websockets")
CHANNELS_BUDGET = 20_000
PATH = "/ws/coremq/"
HOST = "127.0.0.1"
_PAD = "x" * 64  # a message of about 100 bytes, as in the other benchmarks


@dataclass(frozen=True)
class Settings:
    subscribers: tuple[int, ...] = (100, 1000)
    duration: float = 5.0
    window: int = 100
    budget: int = 100_000
    latency_subscribers: int = 100
    rate: float = 10.0
    latency_duration: float = 10.0
    stall: float = 30.0
    coremq: str = "in-process"
    shared_check: bool = True
    quiet_wait: float = 10.0
    quiet_budget: float = 150.0
    peers: tuple[str, ...] = PEERS
    profile: str | None = None


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
    """Checks that messages 0, 1, 2... arrive once and in order; counts them into the run.

    Each frame is parsed and checked here, unless :meth:`follow` hands the
    subscriber's bytes to a :class:`~bench.wsverify.SharedStream` instead.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.expected = 0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.socket: WebSocket | None = None
        self.follower: StreamFollower | None = None

    def follow(self, shared: SharedStream) -> None:
        """From now on compare raw bytes with the other subscribers' (only before any message arrived)."""
        socket = self.socket
        if socket is None or socket.reader._buffer or self.expected:
            return
        self.follower = StreamFollower(shared, self._leave)
        socket.raw = self._on_bytes

    def _on_bytes(self, data: bytes) -> None:
        new = self.follower.feed(data)  # type: ignore[union-attr]
        if new:
            run = self.run
            run.delivered += new
            run.last_delivery = time.perf_counter()
            run.progress()

    def _leave(self, backlog: bytes, count: int) -> None:
        """Our bytes differ from the shared stream's: parse them on our own from a frame boundary."""
        socket = self.socket
        assert socket is not None
        socket.raw = None
        self.expected = count
        socket.dispatch(backlog)

    def on_text(self, payload: bytes) -> None:
        seq = message_seq(payload)
        if seq is None:
            if not self.ready.done() and b'"subscribed"' in payload:
                self.ready.set_result(None)
            elif b'"error"' in payload:
                self.run.errors.append(payload.decode(errors="replace"))
            return
        now = time.perf_counter()
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
        # From several loopback addresses, as a crowd of pages comes from many: CoreMQ takes at
        # most MAX_CONNECTIONS_PER_ADDRESS anonymous browsers from one (see net.source_address).
        sockets = await asyncio.gather(*(connect(HOST, port, f"{PATH}?queues={queue}", s.on_text,
                                                 local_addr=source_address(start + i))
                                         for i, s in enumerate(batch)))
        for subscriber, ws in zip(batch, sockets):
            subscriber.socket = ws
        await asyncio.wait_for(asyncio.gather(*(s.ready for s in batch)), 120)
    publisher = Publisher(run, queue)
    publisher.socket = await connect(HOST, port, PATH, publisher.on_text)
    return subscribers, publisher


_MESSAGE_BYTES = 100  # less than any server's delivery frame of a benchmark message


def _read_at_least(subscribers: list[Subscriber], nbytes: int) -> None:
    """``SO_RCVLOWAT``: the kernel reports a subscriber's socket readable once ``nbytes`` are there.

    Lowering it wakes a socket that holds at least the new amount (Linux >= 4.18).
    """
    for subscriber in subscribers:
        transport = subscriber.socket.transport if subscriber.socket is not None else None
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)


async def close_clients(subscribers: list[Subscriber], publisher: Publisher) -> None:
    """Close every connection and wait (a little) until they are closed, before the server is stopped."""
    sockets = [client.socket for client in [*subscribers, publisher] if client.socket is not None]
    for socket in sockets:
        socket.close()
    await asyncio.wait([socket.closed for socket in sockets], timeout=5)


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
    budget = min(settings.budget, server.max_budget or settings.budget)
    run = Run(count, record_latency=False)
    subscribers, publisher = await open_clients(server.port, count, run)
    try:
        await asyncio.sleep(0.5)  # let the connection burst settle
        if settings.shared_check:
            shared = SharedStream(run.errors)
            for subscriber in subscribers:
                subscriber.follow(shared)
            # Wake a subscriber only once a few messages are waiting (about a quarter of its share of
            # the budget), so that each read carries several frames; reset before the last ones.
            _read_at_least(subscribers, min(64 * 1024, max(1, budget // count // 4) * _MESSAGE_BYTES))
        cpu = CpuWindow(server)
        published = 0
        start = time.perf_counter()
        deadline = start + settings.duration
        while time.perf_counter() < deadline and not run.errors:
            in_flight = published - run.acked
            behind = published * count - run.delivered
            room = min(settings.window - in_flight, (budget - behind) // count)
            if room <= 0:
                publisher.answered = asyncio.get_running_loop().create_future()
                waits = {publisher.answered, run.wait_for_deliveries(run.delivered + max(count, budget // 4))}
                await asyncio.wait(waits, timeout=settings.stall, return_when=asyncio.FIRST_COMPLETED)
                continue
            frames = [publisher.frame(seq) for seq in range(published, published + min(room, 50))]
            now = time.perf_counter()
            run.sent_at.extend([now] * len(frames))
            publisher.socket.send_many(frames)  # type: ignore[union-attr]
            published += len(frames)
            await asyncio.sleep(0)
        _read_at_least(subscribers, 1)
        await wait_delivered(run, published * count, settings.stall)
        elapsed = run.last_delivery - start
        cores = cpu.shares()
    finally:
        await close_clients(subscribers, publisher)
    lost = published * count - run.delivered
    return {
        "subscribers": count, "budget": budget, "published": published, "delivered": run.delivered, "lost": lost,
        "seconds": round(elapsed, 3), "deliveries_per_s": round(run.delivered / elapsed) if elapsed > 0 else 0,
        **cores,
        # CPU per delivery: what the server spends, and what the generator spends checking it
        "server_us": round(cores["server_cpu_s"] / run.delivered * 1e6, 2) if run.delivered else None,
        "generator_us": round(cores["generator_cpu_s"] / run.delivered * 1e6, 2) if run.delivered else None,
        # subscribers checked against the shared stream, and those that parsed their own bytes
        "shared": sum(s.follower is not None and s.follower.active for s in subscribers),
        "ok": not run.errors and lost == 0, "errors": run.errors[:5],
    }


async def latency(server: "Server", count: int, settings: Settings) -> dict[str, Any]:
    run = Run(count, record_latency=True)
    subscribers, publisher = await open_clients(server.port, count, run)
    try:
        await asyncio.sleep(0.5)
        cpu = CpuWindow(server)
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
        cores = cpu.shares()
    finally:
        await close_clients(subscribers, publisher)
    samples = sorted(run.latencies or [])
    ms = {name: round(percentile(samples, q) * 1000, 3) for name, q in
          (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100))}
    lost = total * count - run.delivered
    return {"subscribers": count, "rate": settings.rate, "published": total, "samples": len(samples),
            "latency_ms": ms, **cores, "lost": lost, "ok": not run.errors and lost == 0, "errors": run.errors[:5]}


class CpuWindow:
    """Cores used from now until :meth:`shares`: the server's, the generator's (this process), everything else's."""

    def __init__(self, server: "Server") -> None:
        if server.on_measure is not None:
            server.on_measure()
        self.server = server.cpu_meter()
        self.own = _own_cpu()
        self.busy = _busy()
        self.start = time.perf_counter()

    def shares(self) -> dict[str, float]:
        wall = time.perf_counter() - self.start
        server = self.server()
        generator = _own_cpu() - self.own
        other = max(0.0, _busy() - self.busy - server - generator)
        return {"server_cpu": round(server / wall, 2), "generator_cpu": round(generator / wall, 2),
                "other_cpu": round(other / wall, 2), "seconds_measured": round(wall, 3),
                "server_cpu_s": round(server, 4), "generator_cpu_s": round(generator, 4),
                "load_average": round(os.getloadavg()[0], 2)}


# -- the servers -----------------------------------------------------------------------

class Server:
    """A server process under test (and any helper whose CPU counts with it, such as Redis)."""

    def __init__(self, name: str, label: str, port: int, pids: list[int], processes: list[subprocess.Popen]) -> None:
        self.name, self.label, self.port = name, label, port
        self.pids, self.processes = pids, processes
        self.on_measure: Callable[[], None] | None = None  # called when the measured window starts
        self.max_budget: int | None = None  # a cap on the deliveries in flight, for a server that needs one

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
    server = Server("channels", "Channels group_send (channels_redis)", port, [process.pid, redis_pid], [process])
    # channels_redis drops a message left 60 s in Redis (its expiry): more in flight than Channels
    # delivers in that time is lost, not slow. 20,000 is what issue 3's figures were measured with.
    server.max_budget = CHANNELS_BUDGET
    return server


def start_channels_coremq(workdir: Path) -> Server:
    """The same Channels consumer on CoreMQ's channel layer: daphne and a ``run_coremq --no-web`` broker."""
    from .coremq_process import CoreMQProcess

    broker = CoreMQProcess("command", log_path=workdir / f"channels-coremq-broker-{next(_STARTS)}.log").start()
    log = workdir / f"channels-coremq-{next(_STARTS)}.log"
    port = _free_port()
    process = _spawn([sys.executable, "-m", "daphne", "-b", HOST, "-p", str(port), "bench.channels_peer:application"],
                     log, {"BENCH_CHANNEL_LAYER": "coremq", "BENCH_COREMQ_URL": f"coremq://{HOST}:{broker.port}"})
    _wait_for(lambda: _accepts(port), "daphne (Channels peer, CoreMQ layer)", process, log)
    assert broker.process is not None
    server = Server("channels-coremq", "Channels consumer + CoreMQ layer", port, [process.pid, broker.pid],
                    [process, broker.process])
    server.max_budget = CHANNELS_BUDGET  # the same window as channels_redis', for the same consumer
    return server


def node_packages() -> Path:
    """``bench/node/node_modules``, installed from ``package-lock.json`` by ``npm ci`` if ``ws`` is missing."""
    modules = NODE_PEER / "node_modules"
    if (modules / "ws" / "package.json").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise RuntimeError("the Node ws peer needs Node.js and npm (Debian: apt-get install nodejs npm)")
    done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel", "error"], cwd=NODE_PEER,
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not (modules / "ws" / "package.json").exists():
        raise RuntimeError(f"npm ci in {NODE_PEER} failed ({done.returncode}): {done.stderr[-1000:]}")
    return modules


def start_node(workdir: Path) -> Server:
    """``node bench/node/broadcast.js PORT``: the bare ``ws`` broadcast server."""
    node_packages()
    log = workdir / f"node-{next(_STARTS)}.log"
    port = _free_port()
    process = _spawn(["node", str(NODE_PEER / "broadcast.js"), str(port), HOST], log)
    _wait_for(lambda: b"listening on" in log.read_bytes(), "node (ws peer)", process, log)
    return Server("node", "Node ws (bare broadcast)", port, [process.pid], [process])


def start_websockets(workdir: Path) -> Server:
    """``python -m bench.websockets_peer PORT``: the bare ``websockets.broadcast()`` server."""
    log = workdir / f"websockets-{next(_STARTS)}.log"
    port = _free_port()
    process = _spawn([sys.executable, "-m", "bench.websockets_peer", str(port), HOST], log)
    _wait_for(lambda: b"listening on" in log.read_bytes(), "websockets peer", process, log)
    return Server("websockets", "websockets broadcast() (Python)", port, [process.pid], [process])


def versions() -> dict[str, str]:
    """The versions of what is compared: Node and ws, websockets, channels."""
    import channels
    import websockets

    found = {"python": sys.version.split()[0], "websockets": websockets.__version__, "channels": channels.__version__}
    ws_package = NODE_PEER / "node_modules" / "ws" / "package.json"
    if ws_package.exists():
        found["ws"] = json.loads(ws_package.read_text())["version"]
    if shutil.which("node"):
        found["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return found


# -- the command -------------------------------------------------------------------------

def starters(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Server name -> a function that starts a fresh one, in the order of the tables."""
    found: dict[str, Any] = {}
    if settings.coremq in ("in-process", "both"):
        found["coremq"] = lambda: start_coremq("in-process", workdir)
    if settings.coremq in ("remote", "both"):
        found["coremq-remote"] = lambda: start_coremq("remote", workdir)
    peers = {"channels": start_channels, "channels-coremq": start_channels_coremq, "node": start_node,
             "websockets": start_websockets}
    for name in settings.peers:
        found[name] = lambda start=peers[name]: start(workdir)
    return found


async def measure(name: str, start: Any, what: str, run: Any, settings: Settings, log: Any,
                  profiles: dict[str, str], quiet: Suite) -> dict[str, Any]:
    """One measurement against a freshly started server, on a quiet machine if it becomes quiet.

    As in the other benchmarks (:class:`bench.suite.Suite`): wait (bounded)
    until other processes use little CPU; a run during which they used more
    than ``noise`` cores is repeated once and, if still disturbed, kept and
    flagged ``noisy``. With ``--profile py-spy``, py-spy samples CoreMQ's process.
    """
    for attempt in range(quiet.settings.retries + 1):
        load = await quiet.wait_for_quiet()
        started = time.monotonic()
        with ExitStack() as stack:
            server = start()
            stack.callback(server.stop)
            log(f"{server.label}: {what}")
            spies: list[PySpy] = []
            if settings.profile == "py-spy" and name.startswith("coremq"):
                raw = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "pyspy.txt"
                # the broker's process, from the first publish on (not while the subscribers connect)
                server.on_measure = lambda: spies.append(PySpy(server.pids[-1], raw))
            try:
                result = await run(server)
            finally:
                for spy in spies:
                    spy.stop()
                    profiles[f"{name}: {what}"] = top_frames(spy.path)
        result.update(label=server.label, attempt=attempt + 1, load_before=round(load, 2),
                      noisy=(result.get("other_cpu") or 0.0) > quiet.settings.noise)
        log(f"  {result}")
        if (not result["ok"] or not result["noisy"] or attempt == quiet.settings.retries
                or quiet.spent >= quiet.settings.quiet_budget):
            return result
        quiet.repeated += time.monotonic() - started
        log(f"  (other processes used {result['other_cpu']} cores; repeating)")
    raise AssertionError("unreachable")


async def run_all(settings: Settings, log: Any) -> dict[str, Any]:
    """Every measurement against a freshly started server, so that no run inherits another's backlog.

    Interleaved: for each N, every server in turn, then the latency of every
    server, so that all of them see the same conditions on a shared machine.
    """
    results: dict[str, Any] = {"settings": asdict(settings), "machine": {"cpus": os.cpu_count()},
                               "versions": versions(), "servers": {}}
    profiles: dict[str, str] = {}
    quiet = Suite(SuiteSettings(quiet_wait=settings.quiet_wait, quiet_budget=settings.quiet_budget), log)
    with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
        workdir = Path(tmp)
        servers = starters(settings, workdir)
        entries = results["servers"]
        for name in servers:
            entries[name] = {"label": name, "throughput": [], "latency": None}
        for count in settings.subscribers:
            for name, start in servers.items():
                row = await measure(name, start, f"throughput, {count} subscribers",
                                    lambda server: throughput(server, count, settings), settings, log, profiles, quiet)
                entries[name]["label"] = row.pop("label")
                entries[name]["throughput"].append(row)
        for name, start in servers.items():
            row = await measure(name, start, f"latency, {settings.latency_subscribers} subscribers at {settings.rate}/s",
                                lambda server: latency(server, settings.latency_subscribers, settings),
                                settings, log, profiles, quiet)
            entries[name]["label"] = row.pop("label")
            entries[name]["latency"] = row
        if any(not ok(entry) for entry in entries.values()):
            results["logs"] = {path.name: path.read_text(errors="replace")[-2000:] for path in workdir.glob("*.log")}
    results["versions"] = versions()  # after the servers ran: the Node peer's first start installs ws
    results["quiet"] = {"waited_s": round(quiet.waited, 1), "repeated_s": round(quiet.repeated, 1)}
    results["comparison"] = compare(results)
    results["target"] = check_target(results)
    results["layer_target"] = check_layer_target(results)
    if profiles:
        results["profiles"] = profiles
    return results


def ok(entry: dict[str, Any]) -> bool:
    return all(r["ok"] for r in entry["throughput"]) and entry["latency"] is not None and entry["latency"]["ok"]


def compare(results: dict[str, Any]) -> dict[str, Any]:
    """Each CoreMQ's figures against each peer's: deliveries/s ratios per N, and p99 latency ÷ the peer's."""
    servers = results["servers"]
    out: dict[str, Any] = {}
    for name, entry in servers.items():
        if not name.startswith("coremq"):
            continue
        for peer, theirs in servers.items():
            if peer.startswith("coremq"):
                continue
            ratios = {}
            for mine, their_row in zip(entry["throughput"], theirs["throughput"]):
                if their_row["deliveries_per_s"]:
                    ratios[str(mine["subscribers"])] = round(mine["deliveries_per_s"] / their_row["deliveries_per_s"], 2)
            p99 = entry["latency"]["latency_ms"]["p99"]
            their_p99 = theirs["latency"]["latency_ms"]["p99"]
            out[f"{name} vs {peer}"] = {"throughput_x": ratios, "p99_ratio": round(p99 / their_p99, 3) if their_p99 else None,
                                        "p99_ms": p99, "peer_p99_ms": their_p99}
    return out


def check_target(results: dict[str, Any]) -> dict[str, Any] | None:
    """Issue 12: CoreMQ's in-process bridge >= 1x Node ws's deliveries/s at 1,000 subscribers, p99 no higher."""
    ratio = results["comparison"].get("coremq vs node")
    if ratio is None:
        return None
    throughput_x = ratio["throughput_x"].get("1000")
    latency_n = results["settings"]["latency_subscribers"]
    if throughput_x is None or latency_n != 100 or ratio["p99_ratio"] is None:
        return {"throughput_x_at_1000": throughput_x, "p99_ratio": ratio["p99_ratio"], "met": None}
    return {"throughput_x_at_1000": throughput_x, "p99_ratio": ratio["p99_ratio"],
            "met": throughput_x >= 1.0 and ratio["p99_ratio"] <= 1.0}


def check_layer_target(results: dict[str, Any]) -> dict[str, Any] | None:
    """Issue 18: the Channels consumer on CoreMQ's layer >= 3x channels_redis' deliveries/s at 1,000 subscribers,
    and a lower p99 at 100."""
    servers = results["servers"]
    ours, theirs = servers.get("channels-coremq"), servers.get("channels")
    if ours is None or theirs is None:
        return None
    ratios = {str(a["subscribers"]): round(a["deliveries_per_s"] / b["deliveries_per_s"], 2)
              for a, b in zip(ours["throughput"], theirs["throughput"]) if b["deliveries_per_s"]}
    p99, their_p99 = ours["latency"]["latency_ms"]["p99"], theirs["latency"]["latency_ms"]["p99"]
    judged = "1000" in ratios and results["settings"]["latency_subscribers"] == 100
    return {"throughput_x": ratios, "p99_ms": p99, "peer_p99_ms": their_p99,
            "met": (ratios["1000"] >= 3.0 and p99 < their_p99) if judged else None}


def render(results: dict[str, Any]) -> str:
    lines = ["CPU: cores used during the run by the server (with Redis for Channels), the load generator, "
             "everything else;",
             "µs/msg: CPU microseconds per delivery, the server's and the generator's; load: 1-minute load average",
             f"{'server':40} {'N':>5} {'deliveries/s':>13} {'lost':>5} {'server CPU':>10} {'gen CPU':>8} "
             f"{'other CPU':>9} {'server µs/msg':>13} {'gen µs/msg':>10} {'load':>5}"]
    for entry in results["servers"].values():
        for row in entry["throughput"]:
            lines.append(f"{entry['label']:40} {row['subscribers']:>5} {row['deliveries_per_s']:>13,} {row['lost']:>5} "
                         f"{row['server_cpu']!s:>10} {row['generator_cpu']!s:>8} {row.get('other_cpu')!s:>9} "
                         f"{row.get('server_us')!s:>13} {row.get('generator_us')!s:>10} {row.get('load_average')!s:>5}"
                         + ("" if row["ok"] else "  FAILED") + ("  (noisy)" if row.get("noisy") else ""))
    lines.append("")
    lines.append(f"{'server':40} {'N':>5} {'rate/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
                 f"{'max ms':>8} {'other CPU':>9} {'load':>5}")
    for entry in results["servers"].values():
        row = entry["latency"]
        ms = row["latency_ms"]
        lines.append(f"{entry['label']:40} {row['subscribers']:>5} {row['rate']:>7} {ms['p50']:>8} {ms['p90']:>8} "
                     f"{ms['p99']:>8} {ms['p99.9']:>9} {ms['max']:>8} {row.get('other_cpu')!s:>9} "
                     f"{row.get('load_average')!s:>5}" + ("" if row["ok"] else "  FAILED")
                     + ("  (noisy)" if row.get("noisy") else ""))
    if results.get("comparison"):
        lines.append("")
    for pair, ratio in results.get("comparison", {}).items():
        xs = ", ".join(f"N={n}: x{x}" for n, x in ratio["throughput_x"].items())
        lines.append(f"{pair}: deliveries/s {xs}; p99 {ratio['p99_ms']} ms vs {ratio['peer_p99_ms']} ms "
                     f"(x{ratio['p99_ratio']})")
    target = results.get("target")
    if target is not None and target["met"] is None:
        lines.append("issue 12 target not judged: it needs a run at 1,000 subscribers and latency at 100")
    elif target is not None:
        lines.append(f"issue 12 target (CoreMQ >= 1x Node ws at N=1000, p99 no higher): "
                     f"{'MET' if target['met'] else 'NOT MET'} (x{target['throughput_x_at_1000']} deliveries/s, "
                     f"p99 x{target['p99_ratio']})")
    layer = results.get("layer_target")
    if layer is not None:
        xs = ", ".join(f"N={n}: x{x}" for n, x in layer["throughput_x"].items())
        verdict = "not judged (needs N=1000 and latency at 100)" if layer["met"] is None else (
            "MET" if layer["met"] else "NOT MET")
        lines.append(f"issue 18 target (Channels consumer + CoreMQ layer >= 3x channels_redis at N=1000, lower p99 "
                     f"at 100): {verdict} (deliveries/s {xs}; p99 {layer['p99_ms']} ms vs {layer['peer_p99_ms']} ms)")
    for what, profile in results.get("profiles", {}).items():
        lines += ["", f"py-spy, {what}:", profile]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[Settings, Path]:
    """The settings, and the directory for ``websocket.json``."""
    p = argparse.ArgumentParser(prog="python -m bench websocket", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", default="100,1000", help="comma-separated N for throughput (default %(default)s)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of publishing per throughput run")
    p.add_argument("--window", type=int, default=100, help="unanswered publishes at most")
    p.add_argument("--budget", type=int, default=100_000, help="deliveries in flight at most, all subscribers")
    p.add_argument("--latency-subscribers", type=int, default=100)
    p.add_argument("--rate", type=float, default=10.0, help="publishes per second in the latency run "
                                                           "(default: well within Channels' capacity)")
    p.add_argument("--latency-duration", type=float, default=10.0)
    p.add_argument("--coremq", choices=("in-process", "remote", "both", "none"), default="in-process",
                   help="CoreMQ's web side: inside run_coremq, a separate daphne, both, or none (peers only)")
    p.add_argument("--peers", default=",".join(PEERS),
                   help="comma-separated peers among %(default)s, or none (default: all; channels needs Redis)")
    p.add_argument("--profile", choices=("py-spy",), help="sample CoreMQ's process with py-spy during its runs "
                                                         "(.venv/bin/pip install py-spy)")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="seconds to wait for a quiet machine before "
                                                                   "each run (0: never wait)")
    p.add_argument("--quiet-budget", type=float, default=150.0,
                   help="seconds that waiting for quiet and repeating disturbed runs may add in all")
    p.add_argument("--no-shared-check", dest="shared_check", action="store_false",
                   help="parse and check every subscriber's frames on its own (costlier for the generator)")
    p.add_argument("--quick", action="store_true", help="a short pass: N=10,100, 1 s runs")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where websocket.json goes (default bench/results)")
    args = p.parse_args(argv)
    peers = tuple(name for name in args.peers.split(",") if name and name != "none")
    unknown = set(peers) - set(PEERS)
    if unknown:
        p.error(f"unknown peers {', '.join(sorted(unknown))}: choose among {', '.join(PEERS)}")
    common = {"coremq": args.coremq, "peers": peers, "profile": args.profile, "shared_check": args.shared_check,
              "quiet_wait": args.quiet_wait, "quiet_budget": args.quiet_budget}
    if args.quick:
        return Settings(subscribers=(10, 100), duration=1.0, latency_subscribers=10, rate=20, latency_duration=2,
                        **common), args.results_dir
    return Settings(subscribers=tuple(int(n) for n in args.subscribers.split(",")), duration=args.duration,
                    window=args.window, budget=args.budget, latency_subscribers=args.latency_subscribers,
                    rate=args.rate, latency_duration=args.latency_duration, **common), args.results_dir


def main(argv: Sequence[str] | None = None) -> int:
    settings, results_dir = parse_args(argv)
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
    failed = [name for name, entry in results["servers"].items() if not ok(entry)]
    if failed:
        print(f"BENCHMARK FAILED for {', '.join(failed)}: a message was lost, reordered or refused", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
