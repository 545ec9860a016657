"""The bridge's link to the broker, in-process or remote, and the one bridge per event loop.

- :class:`InProcessLink`: inside ``run_coremq``, where daphne and the broker
  share one event loop, the bridge is a broker connection like a TCP client's,
  minus the socket: the broker calls :meth:`BridgeConnection.send` (answers)
  and :meth:`BridgeConnection.deliver` (messages, with their queue) once per
  loop turn (an append), and flushes once per loop turn.
- :class:`RemoteLink`: any other process (``daphne coremq_project.asgi:application``)
  reaches the broker of ``settings.COREMQ`` with one
  :class:`~coremq_client.AsyncMessageQueue`, which reconnects and resubscribes by
  itself; after each reconnection every browser gets a new welcome.

:func:`get_bridge` picks the link when the loop's bridge is first needed.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any, Callable, Mapping

from django.core.signals import setting_changed
from django.dispatch import receiver

from coremq_client import protocol as P
from coremq_client.async_client import AsyncMessageQueue
from coremq_client.codec import Frame
from coremq_client.errors import ConnectionClosed, CoreMQError

from ... import conf
from ...auth.policy import BRIDGE, PolicyFollower, follow_policy
from ...core.broker import Broker
from ...publishing import client_options
from ...core.registry import Connection
from ...core.version import VERSION
from ...core.wire import payloads
from .bridge import Bridge, BrokerLink
from .daphne import close_on_shutdown

if TYPE_CHECKING:
    from ...core.config import BrokerConfig

__all__ = ["BridgeConnection", "InProcessLink", "RemoteLink", "get_bridge", "open_bridge", "close_bridges"]

logger = logging.getLogger("coremq.websocket")


class InProcessLink(BrokerLink):
    """The bridge as a connection of a broker on the same event loop.

    Requests go through :meth:`Broker.handle_frame` like a TCP client's frames;
    answers and deliveries come back through :class:`BridgeConnection`, are
    buffered, and are handled once per loop turn (or at once, before and after
    each request, so that answers keep their order with messages).
    """

    kind = "in-process"

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.codec = broker.codec
        self.connection = BridgeConnection(self, broker.new_connection_id())
        self._pending: dict[int, asyncio.Future[dict]] = {}
        self._bridge: Bridge | None = None
        self.lost = False

    async def start(self, bridge: Bridge) -> None:
        self.broker.connection_made(self.connection)
        if self.lost:
            raise ConnectionClosed("the broker refused the bridge's connection")
        self._bridge = bridge
        await self._request(self.connection.id, {P.OPTIONS: {P.OPTION_ECHO: True}})
        bridge.connected(self.connection.id, f"{self.broker.address}@{self.broker.registry.started}")

    async def subscribe(self, queues: list[str]) -> None:
        await self._request(self.connection.id, {P.SUBSCRIBE: queues})

    async def unsubscribe(self, queues: list[str]) -> None:
        await self._request(self.connection.id, {P.UNSUBSCRIBE: queues})

    async def publish(self, queue: str, stored: dict) -> dict:
        return await self._request(queue, stored)

    async def history(self, since: Mapping[str, int | None], limit: int | None = None) -> dict:
        request: dict[str, Any] = {P.GETHISTORY: dict(since)}
        if limit is not None:
            request["limit"] = limit
        return await self._request(self.connection.id, request)

    async def close(self) -> None:
        self.closed_by("the bridge closed")

    def _request(self, queue: str, message: dict) -> asyncio.Future[dict]:
        """Hand one frame to the broker; the future is the reply (most replies come at once)."""
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        if self.lost:
            future.set_exception(ConnectionClosed("the broker closed the bridge's connection"))
            return future
        connection = self.connection
        connection.flush()  # deliveries the broker made before this request go out first
        self._pending[connection.requests + 1] = future  # handle_frame counts this frame first
        body = self.codec.dumps(message)
        connection.bytes_in += len(body)
        self.broker.handle_frame(connection, Frame(queue, body))
        connection.flush()
        return future

    def received(self, data: bytes, queue: str | None) -> None:
        """Frames from the broker: answers (``queue`` None), or messages of ``queue`` for the browsers."""
        loads = self.codec.loads
        for body in payloads(data):
            message = loads(body)
            if queue is None:
                if isinstance(message, dict):
                    self._reply(message)
            elif self._bridge is not None:
                self._bridge.delivered(queue, message)

    def _reply(self, message: dict) -> None:
        request = message.get("request")
        reply = P.Reply(request if isinstance(request, int) else None, message)
        future = self._pending.pop(reply.request, None) if reply.request is not None else None
        if future is None:
            if reply.error is not None:
                logger.warning("WebSocket bridge %s: %s", self.connection.id, reply.response)
            return  # the welcome, BYE (close() follows), or a notice
        if not future.done():
            if reply.error is None:
                future.set_result(message)
            else:
                future.set_exception(P.error_for(reply.error))

    def closed_by(self, reason: str) -> None:
        """The connection ends (BYE on shutdown, an administrator, revoked access, or our close())."""
        if self.lost:
            return
        self.connection.flush()
        self.lost = True
        self.connection.closing = True
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionClosed(f"the broker closed the bridge's connection: {reason}"))
        self._pending.clear()
        self.broker.connection_lost(self.connection, reason)
        if self._bridge is not None:
            self._bridge.lost(reason)


class BridgeConnection(Connection):
    """What the broker's registry holds for an :class:`InProcessLink`: ``send`` only appends."""

    transport_name = "websocket-bridge"

    def __init__(self, link: InProcessLink, connection_id: str) -> None:
        super().__init__(connection_id, peer="in-process")
        self.link = link
        self._out: list[tuple[bytes, str | None]] = []  # (frames, their queue: None for answers), in order

    def send(self, data: bytes) -> None:
        self._buffer(data, None)

    def deliver(self, data: bytes, queue: str, first_id: int, last_id: int) -> bool:
        self._buffer(data, queue)
        return False

    def _buffer(self, data: bytes, queue: str | None) -> None:
        if self.closing:
            return
        out = self._out
        if not out:
            self.link.broker.schedule_flush(self)
        out.append((data, queue))

    def flush(self) -> None:
        while self._out:
            pieces, self._out = self._out, []
            self.bytes_out += sum([len(data) for data, _ in pieces])
            for data, queue in pieces:
                self.link.received(data, queue)

    def close(self, reason: str | None = None) -> None:
        self.link.closed_by(reason or "the broker closed")


class RemoteLink(BrokerLink):
    """The bridge as one :class:`AsyncMessageQueue` to the broker of another process."""

    kind = "remote"

    def __init__(self, host: str, port: int, *, timeout: float = 5.0, **client_options: Any) -> None:
        # resume=False: each browser resumes from its own last ids (coremq.js), after the new welcome.
        self.client = AsyncMessageQueue(host, port, options={P.OPTION_ECHO: True}, timeout=timeout,
                                        reconnect=True, resume=False, on_connect=self._on_connect,
                                        on_gap=self._on_gap, **client_options)
        self._bridge: Bridge | None = None
        self._started: asyncio.Future[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._held: list[Any] | None = None  # deliveries waiting for the browsers' new welcome
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._started = asyncio.get_running_loop().create_future()
        await self.client.connect()
        self._reader = asyncio.create_task(self._read(), name="coremq-websocket-link")
        await self._started

    def _on_connect(self, welcome: dict) -> None:
        """A new connection (first or reconnected): hold deliveries until the browsers have their new welcome.

        Runs before anything is read on the new connection; the welcome needs
        the broker's epoch, which a status request tells.
        """
        if self._held is None:
            self._held = []
        connection_id = str(welcome.get("connection_id") or self.client.connection_id)
        task = asyncio.ensure_future(self._welcome_browsers(connection_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_gap(self, gap: P.Gap) -> None:
        """The broker dropped messages this link read too slowly: the browsers fetch them from history."""
        if self._bridge is not None and not gap.reset:
            self._bridge.dropped(gap.queue, gap.first_missing, gap.last_missing)

    async def _welcome_browsers(self, connection_id: str) -> None:
        try:
            status = await self.client.status()
            epoch = f"{status.get('address')}@{status.get('started')}"
        except CoreMQError as exc:
            if self.client.connection_id != connection_id:
                return  # lost again already; the next connection's welcome releases what is held
            logger.info("WebSocket bridge: no status from the broker (%s); ids restart with each connection", exc)
            epoch = connection_id
        if self._bridge is None or self.client.connection_id != connection_id:
            return
        logger.info("WebSocket bridge connected to %s:%s as %s", self.client.host, self.client.port, connection_id)
        self._bridge.connected(connection_id, epoch)
        held, self._held = self._held or [], None
        for delivery in held:
            self._bridge.delivered(delivery.queue, delivery.raw or delivery.message)
        if self._started is not None and not self._started.done():
            self._started.set_result(None)

    async def _read(self) -> None:
        client = self.client
        while True:
            try:
                delivery = await client.receive()
            except ConnectionClosed:
                break
            assert self._bridge is not None and delivery is not None
            if self._held is not None:
                self._held.append(delivery)
            else:
                self._bridge.delivered(delivery.queue, delivery.raw or delivery.message)
        if self._bridge is not None and not self._closing:
            self._bridge.lost("the link to the broker ended")

    async def subscribe(self, queues: list[str]) -> None:
        await self.client.subscribe(*queues)

    async def unsubscribe(self, queues: list[str]) -> None:
        await self.client.unsubscribe(*queues)

    async def publish(self, queue: str, stored: dict) -> dict:
        reply = await self.client.publish(queue, stored)
        return reply or {}

    async def history(self, since: Mapping[str, int | None], limit: int | None = None) -> dict:
        return await self.client.history(*since, since=dict(since), limit=limit)

    async def close(self) -> None:
        self._closing = True
        await self.client.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


# -- one bridge per event loop ------------------------------------------------------

_bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Bridge]] = weakref.WeakKeyDictionary()


async def get_bridge() -> Bridge:
    """The running loop's bridge, opened on first use; a closed or failed one is replaced.

    Raises what :func:`open_bridge` raises (``ConnectionClosed`` when the broker cannot be reached).
    """
    loop = asyncio.get_running_loop()
    opening = _bridges.get(loop)
    if opening is not None and opening.done():
        if opening.cancelled() or opening.exception() is not None or opening.result().closed:
            opening = None
    if opening is None:
        opening = _bridges[loop] = loop.create_task(open_bridge(), name="coremq-websocket-bridge")
    return await asyncio.shield(opening)


async def open_bridge(config: "BrokerConfig | None" = None) -> Bridge:
    """A started bridge: in-process when a broker runs on this loop, else remote to ``settings.COREMQ``."""
    config = config or conf.get_config()
    broker = Broker.running()
    link: BrokerLink
    stop_following: Callable[[], None] | None = None
    source: Broker | PolicyFollower  # the policy in force, which calls on_access_change with each new one
    if broker is not None and broker.loop is asyncio.get_running_loop():
        link = InProcessLink(broker)
        link.connection.principal = BRIDGE  # it checks each browser with the broker's own policy
        config = broker.config
        source = broker
    else:
        # Logged in with COREMQ['CLIENT_TOKEN'] (a relay), checking browsers with its own copy of the policy.
        link = RemoteLink(**client_options())
        source, stop_following = await follow_policy()
    bridge = Bridge(link, codec=config.codec, max_subscriptions=config.max_subscriptions,
                    access=lambda: source.access, info={
                        "server": config.server_name,
                        "version": VERSION,
                        "max_message_size": conf.get_web_setting("WEBSOCKET_MAX_MESSAGE_SIZE"),
                    })
    _follow(bridge, source)
    if stop_following is not None:
        bridge.on_close.append(stop_following)
    try:
        await bridge.start()
    except BaseException:
        await bridge.close()
        raise
    close_on_shutdown(bridge)  # under daphne: browsers get their close frame before the reactor stops
    logger.info("WebSocket bridge %s (%s link)", bridge.connection_id, link.kind)
    return bridge


def _follow(bridge: Bridge, source: "Broker | PolicyFollower") -> None:
    """Hold ``bridge``'s browsers to each new policy of ``source`` at once, until the bridge closes."""

    def changed(_: Any) -> None:
        bridge.enforce()

    source.on_access_change.append(changed)
    bridge.on_close.append(lambda: source.on_access_change.remove(changed))


async def close_bridges() -> None:
    """Close the running loop's bridge (tests, shutdown); the next :func:`get_bridge` opens a new one."""
    opening = _bridges.pop(asyncio.get_running_loop(), None)
    if opening is None:
        return
    if not opening.done():
        opening.cancel()
    try:
        bridge = await opening
    except (asyncio.CancelledError, CoreMQError, OSError):
        return
    await bridge.close()


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == conf.SETTING:
        # Bridges of other loops close themselves when their link fails; forget them all.
        for loop, opening in list(_bridges.items()):
            if opening.done() and not opening.cancelled() and opening.exception() is None and not loop.is_closed():
                loop.call_soon_threadsafe(lambda bridge=opening.result(): asyncio.ensure_future(bridge.close()))
        _bridges.clear()
