"""Fan-out: one publisher, S subscribers, delivered messages per second.

One run: S subscribers and one publisher connect and subscribe; the publisher
then writes pre-encoded publishes for ``duration`` seconds, as fast as flow
control lets it; the run ends when every subscriber has received every
message. The rate is ``published * S / (last delivery - first publish)``.

Flow control keeps every buffer bounded: at most ``window`` publishes may be
unanswered (targets that answer publishes), and no subscriber may lag the
publisher by more than ``window_for(S)`` messages (the window shrinks for
large S so that at most ``delivery_budget`` deliveries are in flight). Every subscriber's stream is verified as it arrives
(:mod:`bench.streams`, :mod:`bench.protocols`): one lost, duplicated,
reordered or altered message fails the run, as does a subscriber that stops
receiving, a connection the server closes, or a short count at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .measure import CpuMeter, CpuShare
from .net import Link, close_links, open_links
from .protocols import Verifier
from .streams import SeqStream
from .targets import Target

__all__ = ["FanoutResult", "FanoutSettings", "fanout_run", "new_topic"]


def new_topic() -> str:
    """A fresh queue/channel/subject name, so that no run sees another's messages."""
    return f"bench.{os.urandom(4).hex()}"


@dataclass(frozen=True)
class FanoutSettings:
    duration: float = 2.0
    #: Publishes in flight (unanswered, or not yet delivered on average).
    window: int = 1000
    #: Deliveries in flight across all subscribers; the window shrinks to fit for large S.
    delivery_budget: int = 200_000
    #: Publishes per write at most.
    batch: int = 100
    #: Seconds without progress before a run is declared stuck.
    stall: float = 10.0
    #: Stop after this many publishes even if ``duration`` has not passed (0: no limit).
    max_messages: int = 0

    def window_for(self, subscribers: int) -> int:
        return max(16, min(self.window, self.delivery_budget // max(1, subscribers)))


@dataclass
class FanoutResult:
    target: str
    subscribers: int
    published: int = 0
    delivered: int = 0
    seconds: float = 0.0
    rate: float = 0.0
    cpu: CpuShare | None = None
    server_rss: int = 0
    verified: bool = False
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "subscribers": self.subscribers, "published": self.published,
            "delivered": self.delivered, "seconds": round(self.seconds, 4), "rate": round(self.rate, 1),
            "cpu": self.cpu.as_dict() if self.cpu else None, "server_rss": self.server_rss,
            "verified": self.verified, "error": self.error, **self.extra,
        }


class _Run:
    """The state of one fan-out run, driven by the links' callbacks."""

    def __init__(self, target: Target, settings: FanoutSettings, stream: SeqStream,
                 publisher: Link, subscribers: list[Link], verifiers: list[Verifier], inbound: Verifier | None,
                 acks: bool) -> None:
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.settings = settings
        self.stream = stream
        self.publisher = publisher
        self.subscribers = subscribers
        self.verifiers = verifiers
        self.inbound = inbound  # checks what the publisher receives
        self.ack = inbound if acks else None  # ... and counts answered publishes, if the target answers
        self.count = len(subscribers)
        self.window = settings.window_for(self.count)
        self.threshold = max(1, min(settings.batch, self.window // 4))
        self.published = 0
        self.delivered = 0
        self.slowest = 0  # the lowest count of any subscriber
        self.at_slowest = self.count  # how many subscribers have that count
        self.stopped = False
        self.deadline = 0.0
        self.finished: asyncio.Future[None] = self.loop.create_future()
        self.t_start = 0.0
        self.t_delivered = 0.0
        self.meter = CpuMeter(target)
        self.cpu: CpuShare | None = None

    # -- callbacks ------------------------------------------------------------

    def subscriber_sink(self, verifier: Verifier) -> Any:
        def sink(data: bytes) -> None:
            before = verifier.count
            n = verifier.feed(data)
            if n:
                self.delivered += n
                if before == self.slowest:
                    self.at_slowest -= 1
                    if not self.at_slowest:
                        self.refresh_slowest()
                if self.stopped:
                    self._check_done()
                else:
                    self.pump()
            elif verifier.error is not None:
                self.fail(f"subscriber {self.verifiers.index(verifier)}: {verifier.error}")
        return sink

    def publisher_sink(self, data: bytes) -> None:
        inbound = self.inbound
        if inbound is None:
            self.fail(f"unexpected data to the publisher: {data[:200]!r}")
            return
        if inbound.feed(data) == 0 and inbound.error is not None:
            self.fail(f"publisher: {inbound.error}")
        elif self.stopped:
            self._check_done()
        else:
            self.pump()

    def lost(self, link: Link, exc: Exception | None) -> None:
        self.fail(f"{link.name} was closed by the server ({exc or 'EOF'})")

    def fail(self, reason: str) -> None:
        if not self.finished.done():
            self.finished.set_exception(AssertionError(reason))

    # -- publishing -------------------------------------------------------------

    def pump(self) -> None:
        """Publish as much as flow control allows, in writes of at most ``batch`` messages."""
        if self.stopped or not self.publisher.writable:
            return
        published = self.published
        allowed = self.window - (published - self.slowest)
        if self.ack is not None:
            allowed = min(allowed, self.settings.window - (published - self.ack.count))
        if allowed < self.threshold:
            return
        if self.loop.time() >= self.deadline:
            self.stop()
            return
        limit = self.settings.max_messages
        if limit:
            allowed = min(allowed, limit - published)
        write = self.publisher.write
        while allowed > 0 and self.publisher.writable:
            n = min(allowed, self.settings.batch)
            for piece in self.stream.pieces(published, published + n):
                write(piece)
            published += n
            allowed -= n
        self.published = published
        if limit and published >= limit:
            self.stop()

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self._check_done()

    def _check_done(self) -> None:
        total = self.published * self.count
        if self.delivered == total and not self.t_delivered:
            self.t_delivered = time.perf_counter()
            self.cpu = self.meter.stop()
        if self.t_delivered and (self.ack is None or self.ack.count == self.published):
            if not self.finished.done():
                self.finished.set_result(None)

    def refresh_slowest(self) -> None:
        """Find the lowest count again (when the last subscriber at the old one moved on)."""
        counts = [v.count for v in self.verifiers]
        self.slowest = min(counts)
        self.at_slowest = counts.count(self.slowest)

    def progress(self) -> int:
        return self.delivered + (self.ack.count if self.ack is not None else 0)

    def describe_stall(self) -> str:
        counts = [v.count for v in self.verifiers]
        acked = f", {self.ack.count} answered" if self.ack is not None else ""
        closed = sum(link.closed for link in self.subscribers)
        return (f"no progress for {self.settings.stall:.0f}s: {self.published} published{acked}; subscribers got "
                f"{min(counts)}..{max(counts)} messages ({closed} of them closed)")

    async def run(self) -> None:
        self.meter.start()
        self.t_start = time.perf_counter()
        self.deadline = self.loop.time() + self.settings.duration
        timer = self.loop.call_later(self.settings.duration, self.stop)
        self.pump()
        last, last_change = -1, self.loop.time()
        try:
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(self.finished), 0.05)
                    return
                except TimeoutError:
                    pass
                self.pump()
                now = self.loop.time()
                if self.progress() != last:
                    last, last_change = self.progress(), now
                elif now - last_change > self.settings.stall:
                    self.fail(self.describe_stall())
        finally:
            timer.cancel()


async def drive(target: Any, settings: FanoutSettings, topic: str, publisher: Link,
                subs: list[Link]) -> tuple["_Run", list[Any]]:
    """Publish on ``publisher`` at full speed, verify every delivery on ``subs``; the finished run and verifiers.

    The links are open already (on one server or spread over several nodes).
    """
    wire = target.wire
    delivery_stream = wire.delivery_stream(topic)
    verifiers = [wire.delivery_verifier(topic, delivery_stream) for _ in subs]
    run = _Run(target, settings, SeqStream(wire.publish_frame(topic)), publisher, subs, verifiers,
               wire.publisher_verifier(len(subs)), wire.acks)
    for link, verifier in zip(subs, verifiers):
        link.on_lost = run.lost
        link.set_sink(run.subscriber_sink(verifier))
    publisher.on_lost = run.lost
    publisher.on_writable = run.pump
    publisher.set_sink(run.publisher_sink)
    await run.run()
    return run, verifiers


async def fanout_run(target: Target, subscribers: int, settings: FanoutSettings) -> FanoutResult:
    """One verified fan-out run against ``target`` with ``subscribers`` subscribers."""
    result = FanoutResult(target.name, subscribers)
    wire = target.wire
    topic = new_topic()
    links: list[Link] = []
    try:
        subs = await open_links(target.port, [wire.subscriber(topic, i) for i in range(subscribers)],
                                name=f"{target.label} subscriber", spread=wire.spread_sources)
        links += subs
        publisher = (await open_links(target.port, [wire.publisher(0)], name=f"{target.label} publisher",
                                      spread=wire.spread_sources))[0]
        links.append(publisher)
        run, verifiers = await drive(target, settings, topic, publisher, subs)
        result.published = run.published
        result.delivered = run.delivered
        result.seconds = run.t_delivered - run.t_start
        result.rate = run.delivered / result.seconds if result.seconds > 0 else 0.0
        result.cpu = run.cpu
        result.server_rss = target.rss()
        result.verified = all(v.count == run.published and v.error is None for v in verifiers)
        if not result.verified:
            result.error = "a subscriber's count does not match the publishes"
        result.extra = {"window": run.window}
    except (AssertionError, ConnectionError, OSError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if "run" in locals():
            result.published, result.delivered = run.published, run.delivered
    finally:
        close_links(links)
        # Let the server tear the connections down before the next run is measured.
        await asyncio.sleep(0.2 + subscribers / 5000)
    return result
