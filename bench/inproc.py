"""The broker's own cost per publish, in-process, without sockets.

``python -m bench.inproc [--subscribers 10] [--batch 100] [--seconds 3]``

A :class:`~coremq_broker.core.broker.Broker` gets a publisher and S subscribers
whose transports only count the bytes written to them. The publisher's reads
(``batch`` pre-encoded publishes each, as the fan-out benchmark's publisher
writes them) go through ``TcpConnection.data_received`` and the end-of-
iteration flush, exactly the code that serves a socket. What is left out is
the kernel and the event loop, so the figure is the Python work per publish:
the part of the broker that changes when its code changes. It is a tool for
comparing two versions of the broker's code on one machine, not a figure to
quote against another broker (for those, ``python -m bench fanout``).

Every run checks that each subscriber got every delivery (by counting frames)
and that the publisher got one ``OK`` per publish.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from typing import Any, Callable

from coremq_client.codec import FrameParser, encode_frame

from coremq_broker.core.access import RulePolicy
from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig
from coremq_broker.server import settle_garbage_collector
from coremq_broker.transports.tcp import TcpConnection

__all__ = ["measure"]


class _CountingTransport:
    """What a TcpConnection needs of a transport; counts bytes, or keeps them while ``keep``."""

    def __init__(self) -> None:
        self.bytes = 0
        self.kept: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.kept is not None:
            self.kept.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Loop:
    """Stands in for the event loop: ``call_soon`` callbacks run at :meth:`run_once`."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        self.ready.append(lambda: callback(*args))

    def time(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> "_Timer":
        """Timers (a connection's frame deadlines) never fire here: a measurement is over long before."""
        return _Timer()

    def run_once(self) -> None:
        while self.ready:
            ready, self.ready = self.ready, []
            for callback in ready:
                callback()


class _Timer:
    def cancel(self) -> None:
        pass


def _connect(broker: Broker) -> tuple[TcpConnection, _CountingTransport]:
    connection = TcpConnection(broker)
    transport = _CountingTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    return connection, transport


def measure(subscribers: int = 10, batch: int = 100, seconds: float = 3.0, *, rules: bool = True,
            reads: int = 0) -> dict:
    """Publish ``batch`` messages per read for ``seconds``; return microseconds per publish.

    With ``reads``, exactly that many reads instead (for instruction counts under callgrind).
    """
    # run_coremq's default: a rule snapshot (here empty, so the open default applies).
    access = RulePolicy() if rules else None
    # All its connections share one fake peer address: no per-address bound.
    broker = Broker(BrokerConfig(port=0, durable_path="/nonexistent/coremq-inproc.sqlite3",
                                 max_connections_per_address=0), access=access)
    loop = _Loop()
    broker._loop = loop  # type: ignore[assignment]
    topic = "bench.inproc"
    subs = []
    for _ in range(subscribers):
        connection, transport = _connect(broker)
        connection.data_received(encode_frame(connection.id, json.dumps({"coremq_subscribe": [topic]}).encode()))
        loop.run_once()
        subs.append(transport)
    publisher, out = _connect(broker)
    loop.run_once()
    payload = json.dumps({"seq": 0, "data": "x" * 70}).encode()
    read = b"".join(encode_frame(topic, payload) for _ in range(batch))
    for _ in range(50):  # warm up
        publisher.data_received(read)
        loop.run_once()
    settle_garbage_collector()
    base_bytes = [t.bytes for t in subs]
    samples: list[float] = []
    deadline = time.perf_counter() + seconds

    def one_read(_: object, __: object) -> None:
        publisher.data_received(read)
        loop.run_once()

    # Through functools.reduce so that callgrind can count exactly this part:
    # valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce
    functools.reduce(one_read, range(reads), None)
    published = reads * batch
    while not reads and time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(20):
            publisher.data_received(read)
            loop.run_once()
        samples.append((time.perf_counter() - start) / (20 * batch))
    published += len(samples) * 20 * batch
    got = [t.bytes - b for t, b in zip(subs, base_bytes)]
    if len(set(got)) != 1:
        raise AssertionError(f"subscribers got {min(got)}..{max(got)} bytes")
    _check_one_read(publisher, read, batch, loop, subs[0], out)
    return {"subscribers": subscribers, "batch": batch, "published": published,
            "us_per_publish": statistics.median(samples) * 1e6 if samples else 0.0,
            "best_us": min(samples) * 1e6 if samples else 0.0}


def _check_one_read(publisher: TcpConnection, read: bytes, batch: int, loop: _Loop,
                    subscriber: _CountingTransport, out: _CountingTransport) -> None:
    """One more read, whose frames are parsed: every delivery and reply whole, ids in order."""
    subscriber.kept, out.kept = [], []
    publisher.data_received(read)
    loop.run_once()
    for transport, expect in ((subscriber, "coremq_id"), (out, "response")):
        parser = FrameParser()
        parser.receive_data(b"".join(transport.kept or []))
        events = parser.events()
        try:
            messages = [json.loads(body) for _, body in events]
        except (ValueError, TypeError) as exc:
            raise AssertionError(f"{expect}: a frame is not whole JSON ({exc}): {events[:2]!r}") from None
        if len(messages) != batch or parser.mid_frame or not all(expect in m for m in messages):
            raise AssertionError(f"{expect}: {len(messages)} of {batch} frames whole: {events[:2]!r}")
        ids = [m.get("coremq_id", m.get("id")) for m in messages]
        if ids != list(range(ids[0], ids[0] + batch)):
            raise AssertionError(f"ids out of order: {ids[:5]}...")
    subscriber.kept = out.kept = None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", default="1,10,100")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--open", action="store_true", help="open access (no rule policy)")
    parser.add_argument("--reads", type=int, default=0,
                        help="exactly this many reads, untimed (see bench/README.md: callgrind)")
    args = parser.parse_args(argv)
    for s in (int(x) for x in args.subscribers.split(",")):
        r = measure(s, args.batch, args.seconds, rules=not args.open, reads=args.reads)
        print(f"S={s:<5} batch={r['batch']:<4} {r['us_per_publish']:.3f} us/publish median, "
              f"{r['best_us']:.3f} best ({r['published']:,} publishes)")


if __name__ == "__main__":
    main()
