"""Memory per idle connection: open N, let them sit, read the server's RSS.

Each connection is fully set up before it counts as held: Redis answered a
PING, Mosquitto a CONNECT, NATS a CONNECT and PING, CoreMQ sent its welcome.
The server's resident set size is read before the first connection and after
all are held and a settle time has passed; the growth divided by the number
held is the cost of one. Connections the server refuses (Redis stops at its
``maxclients``) or drops are not held and are reported.

Allocators keep memory they have freed, so a server that has already held
many connections (an earlier run, a fan-out with 1,000 subscribers) grows less
the next time: ``all`` measures this first, and CoreMQ gets a fresh process.
Where a peer reports its own heap (Redis, Mosquitto: :mod:`bench.heap`) its
growth is recorded too, which does not depend on that; the probe that asks
for it is opened first and is one of the N connections.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass
from typing import Any

from .heap import HeapProbe
from .net import Link, close_links, source_address
from .targets import HOST, Target

__all__ = ["ConnsSettings", "ConnsResult", "conns_run", "raise_fd_limit"]


@dataclass(frozen=True)
class ConnsSettings:
    count: int = 10_000
    concurrency: int = 200
    #: Seconds the connections sit idle before RSS is read (Redis shrinks idle clients' buffers in its cron).
    settle: float = 3.0
    #: Also read the heap the server reports (Mosquitto's takes up to its sys_interval, 10 s).
    server_heap: bool = True
    timeout: float = 20.0


@dataclass
class ConnsResult:
    target: str
    requested: int
    held: int = 0
    refused: int = 0
    rss_before: int = 0
    rss_held: int = 0
    rss_after_close: int = 0
    heap_before: int | None = None  # what the server says it allocated (see bench.heap), if it says
    heap_held: int | None = None
    seconds: float = 0.0  # time to open them all
    first_refusal: str = ""
    error: str | None = None

    @property
    def bytes_per_connection(self) -> float:
        return (self.rss_held - self.rss_before) / self.held if self.held else float("nan")

    @property
    def heap_per_connection(self) -> float | None:
        if self.heap_before is None or self.heap_held is None or not self.held:
            return None
        return (self.heap_held - self.heap_before) / self.held

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "requested": self.requested, "held": self.held, "refused": self.refused,
                "rss_before": self.rss_before, "rss_held": self.rss_held, "rss_after_close": self.rss_after_close,
                "bytes_per_connection": round(self.bytes_per_connection, 1), "heap_before": self.heap_before,
                "heap_held": self.heap_held, "heap_per_connection": _round(self.heap_per_connection),
                "open_seconds": round(self.seconds, 3),
                "first_refusal": self.first_refusal, "error": self.error}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (up to the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def _held(link: Link) -> bool:
    ready = link.ready
    return ready.done() and not ready.cancelled() and ready.exception() is None and not link.closed


async def conns_run(target: Target, settings: ConnsSettings) -> ConnsResult:
    """Hold ``settings.count`` idle connections to ``target`` and measure its RSS growth."""
    result = ConnsResult(target.name, settings.count)
    loop = asyncio.get_running_loop()
    wire = target.wire
    links: list[Link] = []
    gate = asyncio.Semaphore(settings.concurrency)

    async def one(index: int) -> None:
        async with gate:
            try:
                async with asyncio.timeout(settings.timeout):
                    _, link = await loop.create_connection(
                        lambda: Link(wire.idle(index), f"{target.label} idle[{index}]"), HOST, target.port,
                        local_addr=source_address(index) if wire.spread_sources else None)
                    links.append(link)
                    await link.ready
            except (ConnectionError, OSError, TimeoutError) as exc:
                result.refused += 1
                result.first_refusal = result.first_refusal or f"{type(exc).__name__}: {exc}"

    heap = await HeapProbe(target).open() if settings.server_heap else None
    try:
        await asyncio.sleep(0.5)
        if heap is not None:
            result.heap_before = await heap.read()
        result.rss_before = target.rss()
        t0 = time.perf_counter()
        # An open heap probe is one of the connections held (Redis counts it against maxclients).
        probing = heap is not None and heap.connected
        await asyncio.gather(*(one(i) for i in range(settings.count - probing)))
        result.seconds = time.perf_counter() - t0
        await asyncio.sleep(settings.settle)
        result.held = sum(1 for link in links if _held(link)) + probing
        result.rss_held = target.rss()
        if heap is not None:
            result.heap_held = await heap.read(fresh=True)
        if result.held < settings.count and not result.first_refusal:
            result.first_refusal = "closed by the server while idle"
    except OSError as exc:  # psutil errors are OSErrors too
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if heap is not None:
            heap.close()
        close_links(links, reset=True)
        await asyncio.sleep(min(settings.settle, 1.0))
        try:
            result.rss_after_close = target.rss()
        except OSError:
            pass
    return result
