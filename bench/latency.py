"""Latency: from the publisher's write to the subscriber's read, in microseconds.

Two modes, one publisher and one subscriber each:

- ``inflight``: one message at a time. The next publish is written when the
  previous one has been delivered (and answered, for targets that answer), so
  this is the bare round trip through the server.
- ``steady``: publishes at a fixed rate (``rate`` per second, written every
  millisecond in the batch that is due), so the server is busy while the
  latency is measured; it must keep up, or the run fails as stuck.

The first 5% of the samples are a warm-up and are dropped. Every delivery is
verified as in the fan-out benchmark, so a lost message fails the run.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .fanout import new_topic
from .measure import CpuMeter, CpuShare, percentile
from .net import Link, close_links, open_links
from .protocols import Verifier
from .streams import SeqStream
from .targets import Target

__all__ = ["LatencySettings", "LatencyResult", "latency_run", "PERCENTILES"]

PERCENTILES = (50, 90, 99, 99.9)


@dataclass(frozen=True)
class LatencySettings:
    duration: float = 2.0
    #: Messages per second in ``steady`` mode.
    rate: int = 10_000
    #: Stop after this many messages even if ``duration`` has not passed (0: no limit).
    max_messages: int = 0
    stall: float = 10.0


@dataclass
class LatencyResult:
    target: str
    mode: str
    samples: int = 0
    percentiles: dict[str, float] = field(default_factory=dict)  # "p50" -> µs
    mean: float = 0.0
    max: float = 0.0
    rate: float = 0.0  # messages per second achieved
    cpu: CpuShare | None = None
    verified: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "mode": self.mode, "samples": self.samples,
                "percentiles_us": {k: round(v, 1) for k, v in self.percentiles.items()},
                "mean_us": round(self.mean, 1), "max_us": round(self.max, 1), "rate": round(self.rate, 1),
                "cpu": self.cpu.as_dict() if self.cpu else None, "verified": self.verified, "error": self.error}


class _Probe:
    """One publisher and one subscriber, timing every message."""

    def __init__(self, mode: str, settings: LatencySettings, stream: SeqStream, publisher: Link,
                 verifier: Verifier, inbound: Verifier | None, acks: bool, meter: CpuMeter) -> None:
        self.loop = asyncio.get_running_loop()
        self.mode = mode
        self.settings = settings
        self.stream = stream
        self.publisher = publisher
        self.verifier = verifier
        self.inbound = inbound  # checks what the publisher receives
        self.ack = inbound if acks else None  # ... and counts answers, if the target answers publishes
        self.meter = meter
        self.sent = 0
        self.sent_at: list[int] = []  # perf_counter_ns of each publish's write
        self.latencies: list[int] = []  # ns, in delivery order
        self.stopped = False
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.t_start = 0.0
        self.t_end = 0.0
        self.cpu: CpuShare | None = None

    def send(self, n: int) -> None:
        now = time.perf_counter_ns()
        for piece in self.stream.pieces(self.sent, self.sent + n):
            self.publisher.write(piece)
        self.sent_at.extend([now] * n)
        self.sent += n

    def on_delivery(self, data: bytes) -> None:
        now = time.perf_counter_ns()  # before checking the bytes: the check is not the server's latency
        before = self.verifier.count
        n = self.verifier.feed(data)
        if n:
            sent_at = self.sent_at
            self.latencies.extend(now - sent_at[seq] for seq in range(before, before + n))
            self.advance()
        elif self.verifier.error is not None:
            self.fail(f"subscriber: {self.verifier.error}")

    def on_ack(self, data: bytes) -> None:
        if self.inbound is None:
            self.fail(f"unexpected data to the publisher: {data[:200]!r}")
        elif self.inbound.feed(data) == 0 and self.inbound.error is not None:
            self.fail(f"publisher: {self.inbound.error}")
        else:
            self.advance()

    def advance(self) -> None:
        """In ``inflight`` mode send the next message once the last is delivered and answered."""
        delivered = self.verifier.count
        answered = self.ack.count if self.ack is not None else delivered
        if delivered == self.sent and answered == self.sent:
            if self.stopped or self.over():
                self.finish()
            elif self.mode == "inflight":
                self.send(1)

    def over(self) -> bool:
        limit = self.settings.max_messages
        return (time.perf_counter() - self.t_start >= self.settings.duration) or bool(limit and self.sent >= limit)

    def tick(self) -> None:
        """``steady`` mode: write the messages due by now, then come back in a millisecond."""
        if self.stopped or self.finished.done():
            return
        if self.over():
            self.stopped = True
            self.advance()
            return
        due = int((time.perf_counter() - self.t_start) * self.settings.rate) + 1
        limit = self.settings.max_messages
        if limit:
            due = min(due, limit)
        if due > self.sent and self.publisher.writable:
            self.send(due - self.sent)
        self.loop.call_later(0.001, self.tick)

    def finish(self) -> None:
        if not self.finished.done():
            self.t_end = time.perf_counter()
            self.cpu = self.meter.stop()
            self.finished.set_result(None)

    def fail(self, reason: str) -> None:
        if not self.finished.done():
            self.finished.set_exception(AssertionError(reason))

    def lost(self, link: Link, exc: Exception | None) -> None:
        self.fail(f"{link.name} was closed by the server ({exc or 'EOF'})")

    async def run(self) -> None:
        self.meter.start()
        self.t_start = time.perf_counter()
        if self.mode == "inflight":
            self.send(1)
        else:
            self.tick()
        last, last_change = -1, self.loop.time()
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(self.finished), 0.1)
                return
            except TimeoutError:
                pass
            now = self.loop.time()
            if self.verifier.count != last:
                last, last_change = self.verifier.count, now
            elif now - last_change > self.settings.stall:
                self.fail(f"stuck: {self.sent} sent, {self.verifier.count} delivered")


async def latency_run(target: Target, mode: str, settings: LatencySettings) -> LatencyResult:
    """One verified latency run (``inflight`` or ``steady``) against ``target``."""
    if mode not in ("inflight", "steady"):
        raise ValueError(f"unknown latency mode {mode!r}")
    result = LatencyResult(target.name, mode)
    wire = target.wire
    topic = new_topic()
    links: list[Link] = []
    try:
        subscriber = (await open_links(target.port, [wire.subscriber(topic, 0)], name=f"{target.label} subscriber"))[0]
        links.append(subscriber)
        publisher = (await open_links(target.port, [wire.publisher(0)], name=f"{target.label} publisher"))[0]
        links.append(publisher)
        verifier = wire.delivery_verifier(topic, wire.delivery_stream(topic))
        probe = _Probe(mode, settings, SeqStream(wire.publish_frame(topic)), publisher, verifier,
                       wire.publisher_verifier(1), wire.acks, CpuMeter(target))
        subscriber.on_lost = publisher.on_lost = probe.lost
        subscriber.set_sink(probe.on_delivery)
        publisher.set_sink(probe.on_ack)
        await probe.run()
        result.verified = verifier.count == probe.sent and verifier.error is None
        samples = probe.latencies[len(probe.latencies) // 20:]
        samples.sort()
        result.samples = len(samples)
        result.percentiles = {f"p{q:g}": percentile(samples, q) / 1000 for q in PERCENTILES}
        result.mean = sum(samples) / len(samples) / 1000 if samples else 0.0
        result.max = samples[-1] / 1000 if samples else 0.0
        result.rate = probe.sent / (probe.t_end - probe.t_start)
        result.cpu = probe.cpu
    except (AssertionError, ConnectionError, OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        close_links(links)
        await asyncio.sleep(0.1)
    return result
