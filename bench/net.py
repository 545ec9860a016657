"""The load generator's connections: one asyncio protocol object per socket.

A :class:`Link` runs its :class:`~bench.handshake.Handshake`, then hands every
received chunk to a ``sink`` callable, unparsed. There is no buffering,
framing or decoding here: the sink is a verifier that compares bytes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Callable, Sequence

from .handshake import Handshake

__all__ = ["Link", "open_links", "close_links", "new_event_loop", "source_address"]

HOST = "127.0.0.1"

#: Connections per source address. Many clients come from many addresses, and a broker may
#: bound the connections of one (CoreMQ: MAX_CONNECTIONS_PER_ADDRESS, 100 anonymous ones by
#: default): the generator spreads its connections over loopback addresses to stay below that.
PER_SOURCE = 64


def source_address(index: int, host: str = HOST) -> tuple[str, int] | None:
    """The local address for connection ``index`` to ``host``: 127.1.x.y, ``PER_SOURCE`` per address (loopback only)."""
    if not host.startswith("127."):
        return None
    block = index // PER_SOURCE
    return f"127.1.{block // 250 % 256}.{block % 250 + 1}", 0


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the cheapest loop for the generator), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Link(asyncio.Protocol):
    """One connection of the load generator."""

    def __init__(self, handshake: Handshake, name: str) -> None:
        self.handshake = handshake
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[Link] = asyncio.get_running_loop().create_future()
        self.sink: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[Link, Exception | None], None] | None = None
        self.on_writable: Callable[[], None] | None = None
        self.writable = True
        self.closed = False
        self.received = 0
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = self.handshake.initial()
        if first:
            transport.write(first)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(data)
            return
        handshake = self.handshake
        if handshake.done:
            self._pending += data
            return
        reply = handshake.feed(data)
        if reply and self.transport is not None:
            self.transport.write(reply)
        if handshake.error is not None:
            if not self.ready.done():
                self.ready.set_exception(handshake.error)
        elif handshake.done:
            self._pending = handshake.leftover
            if not self.ready.done():
                self.ready.set_result(self)

    def set_sink(self, sink: Callable[[bytes], None]) -> None:
        """Send all further input (and what came after the set-up) to ``sink``."""
        self.sink = sink
        pending, self._pending = self._pending, b""
        if pending:
            sink(pending)

    def write(self, data: bytes | memoryview) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.on_writable is not None:
            self.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: closed during set-up ({exc or 'EOF'})"))
        if self.on_lost is not None:
            self.on_lost(self, exc)

    def close(self, *, reset: bool = False) -> None:
        """Close; with ``reset`` send an RST (no TIME_WAIT left behind, for mass closes)."""
        if self.transport is None or self.closed:
            return
        self.on_lost = None
        if reset:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        else:
            self.transport.close()


async def open_links(
    port: int,
    handshakes: Sequence[Handshake],
    *,
    name: str,
    concurrency: int = 100,
    timeout: float = 30.0,
    host: str = HOST,
    spread: bool = False,
) -> list[Link]:
    """Connect one link per handshake, ``concurrency`` at a time; all must finish set-up.

    ``spread``: from several loopback source addresses (see :func:`source_address`).

    Raises the first set-up error (after closing what was opened).
    """
    loop = asyncio.get_running_loop()
    links: list[Link] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int, handshake: Handshake) -> Link:
        async with gate:
            async with asyncio.timeout(timeout):
                _, link = await loop.create_connection(lambda: Link(handshake, f"{name}[{index}]"), host, port,
                                                       local_addr=source_address(index, host) if spread else None)
                links.append(link)
                return await link.ready

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(i, h)) for i, h in enumerate(handshakes)]
    except BaseExceptionGroup as failed:
        close_links(links)
        first = failed.exceptions[0]
        if isinstance(first, TimeoutError):
            raise TimeoutError(f"{name}: set-up of {len(handshakes)} connections took over {timeout}s") from None
        raise first from None
    return [task.result() for task in tasks]


def close_links(links: Sequence[Link], *, reset: bool = False) -> None:
    for link in links:
        link.close(reset=reset)
