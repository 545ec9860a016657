"""The broker: connections, answers, access and the loop turn, whatever transport brought the frames.

:class:`Broker` is composed of parts with one job each:

- the :class:`~coremq_broker.core.registry.Registry` (connections, queues,
  subscriptions) and its :class:`~coremq_broker.core.limits.Bounds`;
- the :class:`~coremq_broker.core.pipeline.Pipeline`, which takes every frame
  (:meth:`Broker.handle_frames`) and publishes through
- the :class:`~coremq_broker.core.engine.Engine` (ids, history, other nodes;
  :class:`~coremq_broker.core.engine.MemoryEngine` by default);
- :class:`~coremq_broker.core.control.Control` for the control requests;
- :class:`~coremq_broker.core.wire.Wire`, which formats every frame it sends.

Transports are composed in from outside (``transport=``: a factory of one
asyncio protocol per accepted TCP connection, given by
:mod:`coremq_broker.server`); the core imports none. Every transport hands
complete frames to :meth:`Broker.handle_frames` and implements
``Connection.send`` and ``Connection.deliver``, which only append to a
buffer; the broker flushes once per loop turn.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import ssl as ssl_module
import time
import uuid
from typing import Any, Awaitable, Callable

from coremq_client import protocol as P
from coremq_client.errors import ProtocolError

from .access import ANONYMOUS, AccessPolicy, FailureTracker, Principal, denial
from .config import BrokerConfig
from .control import Control, RequestError
from .engine import Engine, MemoryEngine
from .limits import Bounds
from .pipeline import Pipeline
from .registry import Connection, Queue, QueueSettings, Registry
from .version import PROTOCOL_VERSION, VERSION
from .wire import Wire

__all__ = ["Broker", "AccessPolicy", "VERSION", "TransportFactory"]

logger = logging.getLogger("coremq.broker")

_FLUSH = operator.methodcaller("flush")
_TURN_OVER = operator.methodcaller("turn_over")

#: Makes the asyncio protocol of one accepted TCP connection of a broker (``TcpConnection``).
TransportFactory = Callable[["Broker"], asyncio.BaseProtocol]


class Broker:
    """A CoreMQ broker serving the 2015 wire protocol with its extensions."""

    _running: "Broker | None" = None

    @classmethod
    def running(cls) -> "Broker | None":
        """The broker started last in this process and not yet closed, if any.

        ASGI code served by ``run_coremq`` (the WebSocket bridge, the status
        page) uses it to reach the live registry in-process, on the same loop.
        """
        return cls._running

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def __init__(
        self,
        config: BrokerConfig | None = None,
        *,
        access: AccessPolicy | None = None,
        authenticator: Callable[[dict], Awaitable[Principal | None]] | None = None,
        queue_settings: Callable[[str], QueueSettings] | None = None,
        ssl: ssl_module.SSLContext | None = None,
        engine: Engine | None = None,
        transport: TransportFactory | None = None,
    ) -> None:
        self.config = config or BrokerConfig()
        self.codec = self.config.codec
        self.wire = Wire(self.codec.dumps)
        self.access = access or AccessPolicy()
        self.open_access = type(self.access) is AccessPolicy
        #: Called after every change of the access policy (a bridge holds its browsers to it).
        self.on_access_change: list[Callable[[AccessPolicy], None]] = []
        self.authenticator = authenticator
        self.auth_failures = FailureTracker(limit=self.config.max_auth_failures)
        self.ssl = ssl if ssl is not None else tls_context(self.config)
        default = QueueSettings.from_config(self.config)
        self.bounds = Bounds(self.config, default)
        self.registry = Registry(queue_settings or (lambda name: default), self.bounds)
        self.engine: Engine = engine or MemoryEngine(self.config)
        self.transport = transport
        self.host = self.config.host
        self.port = self.config.port
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._counted_in = 0
        #: Flushes so far: a connection counts the bytes it reads per turn (max_read_per_iteration).
        self.turn = 0
        self._spent: list[Connection] = []  # connections not read until this turn's output is written
        self._set_address(f"{self.host}:{self.port}")
        self._closed: asyncio.Event | None = None
        self._closing = False
        self.control = Control(self)
        self.pipeline = Pipeline(self)
        self.pipeline.schedule = self._schedule_once
        self.engine.bind(self.pipeline, self.registry, self.bounds)
        #: Where transports hand the frames of one read (the pipeline's door).
        self.handle_frames = self.pipeline.handle_frames

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Start the engine, then bind the TCP listener if a transport was given; :attr:`port` is then bound."""
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self.bounds.start(self._loop, self.registry)
        await self.engine.start(self._loop)
        Broker._running = self
        if self.transport is not None:
            factory = self.transport
            self._server = await self._loop.create_server(
                lambda: factory(self), self.config.host, self.config.port, ssl=self.ssl, reuse_address=True)
            self.host, self.port = self._server.sockets[0].getsockname()[:2]
            self._set_address(f"{self.host}:{self.port}")
        logger.info("CoreMQ broker %r listening on %s%s", self.config.server_name, self.address,
                    " (TLS)" if self.ssl else "")

    def _set_address(self, address: str) -> None:
        self.address = address
        self.wire.serve_as(address)

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._closed is None:
            await self.start()
        assert self._closed is not None
        await self._closed.wait()

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting and reading, answer what was read, say BYE to every client, close gracefully. Idempotent.

        Each connection's write side is shut down behind its BYE and its
        unread input is discarded until the client closes (see
        ``TcpConnection.shutdown``); connections left after ``timeout``
        seconds are aborted.
        """
        if self._closing:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._closing = True
        self.bounds.stop()
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        for connection in list(self.registry.connections.values()):
            connection.hold()  # what was read is answered below; nothing more is taken
        await self.engine.close()
        self._flush_dirty()  # this iteration's deliveries go out before the BYEs
        self._say_bye()
        deadline = time.monotonic() + timeout
        while self.registry.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self.registry.connections.values()):
            logger.warning("connection %s did not drain within %.1fs; aborting", connection.id, timeout)
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
        logger.info("CoreMQ broker on %s closed", self.address)
        if self._closed is not None:
            self._closed.set()
        if Broker._running is self:
            Broker._running = None

    def _say_bye(self) -> None:
        for connection in list(self.registry.connections.values()):
            try:
                self.answer(connection, {"response": P.BYE})
                connection.shutdown()
            except Exception:  # one connection's failure does not keep the others from their BYE
                self.output_failed(connection, "the BYE")
                connection.abort()

    # -- connections -----------------------------------------------------

    def new_connection_id(self) -> str:
        return str(uuid.uuid4())

    def connection_made(self, connection: Connection) -> None:
        """Register ``connection`` and send it the welcome frame (or refuse it: too many)."""
        if len(self.registry.connections) >= self.config.max_connections:
            logger.warning("refused a connection from %s: %d connections is the limit",
                           connection.peer, self.config.max_connections)
            self.refuse(connection, f"too many connections: limit is {self.config.max_connections}")
            connection.close()
            return
        refusal = self.bounds.admit(connection)
        if refusal is not None:
            logger.warning("refused a connection from %s: %s", connection.peer, refusal)
            self.refuse(connection, refusal)
            connection.close()
            return
        connection.publish_limit = self.config.max_publish_rate
        self.registry.add(connection)
        logger.info("connection %s from %s (%s)", connection.id, connection.peer, connection.transport_name)
        self.answer(connection, {
            "response": P.WELCOME,
            "server": self.config.server_name,
            "connection_id": connection.id,
            "version": VERSION,
            "protocol": PROTOCOL_VERSION,
            "max_frame_size": self.config.max_frame_size,
        })

    def connection_lost(self, connection: Connection, reason: str = "") -> None:
        self.registry.remove(connection)
        self.bounds.release(connection)
        logger.info("connection %s closed%s", connection.id, f": {reason}" if reason else "")

    # -- answers ---------------------------------------------------------

    def answer(self, connection: Connection, reply: dict[str, Any], request: int | None = None) -> None:
        """Send ``reply`` on the connection's id queue; it answers ``request`` if given."""
        if request is not None:
            reply["request"] = request
        connection.send(self.wire.answer(connection.id, reply))

    def refuse(self, connection: Connection, reason: str, request: int | None = None, **extra: Any) -> None:
        """Send ``ERROR: reason`` on the connection's id queue; it answers ``request`` if given."""
        connection.send(self.wire.error(connection.id, reason, request, **extra))

    def protocol_error(self, connection: Connection, error: ProtocolError) -> None:
        """Answer a frame that broke the protocol; the transport closes on fatal ones."""
        connection.requests += 1
        self.registry.errors += 1
        logger.warning("connection %s (%s): %s", connection.id, connection.peer, error)
        self.refuse(connection, str(error), connection.requests)

    def handle_frame(self, connection: Connection, frame: tuple[str, bytes]) -> None:
        """Carry out one ``(queue, body)`` frame from ``connection``; never raises for bad input."""
        self.handle_frames(connection, [frame])

    def deliver(self, queue: Queue, stored: dict, sender: Connection | None = None) -> None:
        """Publish ``stored`` to ``queue`` as ``sender`` (None: the server), unacknowledged."""
        self.pipeline.deliver(queue, stored, sender)

    def admin(self, value: Any, *, by: str) -> dict[str, Any]:
        """An administrator's request (see :meth:`Control.admin`)."""
        return self.control.admin(value, by=by)

    def status(self, **detail: bool) -> dict[str, Any]:
        """The server's description (see :meth:`Control.status`)."""
        return self.control.status(**detail)

    # -- access ----------------------------------------------------------

    def check(self, connection: Connection, action: str, name: str | None) -> None:
        """Raise :class:`RequestError` (``permission denied``) unless the policy lets ``connection`` ``action`` ``name``."""
        if not self.access.allows(connection, action, name):
            self.deny(action, name)

    def check_publish(self, connection: Connection, name: str) -> None:
        """:meth:`check` of a publish, with the policy's answer remembered per connection."""
        grants = connection.publish_grants
        allowed = grants.get(name)
        if allowed is None:
            if len(grants) >= 1000:
                grants.clear()
            allowed = grants[name] = self.access.allows(connection, "publish", name)
        if not allowed:
            self.deny("publish", name)

    def deny(self, action: str, name: str | None) -> None:
        self.registry.denials += 1
        raise RequestError(denial(action, name))

    def set_access(self, access: AccessPolicy) -> None:
        """Apply a new access policy to new requests and to live connections at once.

        Connections whose credentials were revoked are closed; subscriptions the
        policy no longer allows end, each with an ``ERROR: permission denied``.
        Then every ``on_access_change`` callback is told.
        """
        self.access = access
        self.open_access = type(access) is AccessPolicy
        for connection in list(self.registry.connections.values()):
            self.enforce(connection)
        for callback in list(self.on_access_change):
            callback(access)

    def enforce(self, connection: Connection) -> None:
        """Hold ``connection`` to the policy in force (a new policy, or a new login on it).

        It is closed if its credentials were revoked; subscriptions it may no
        longer hold end, each with an ``ERROR: permission denied``.
        """
        access = self.access
        connection.publish_grants.clear()
        if connection.principal is not ANONYMOUS and access.is_revoked(connection.principal):
            logger.warning("connection %s: credentials of %r revoked", connection.id, connection.principal.username)
            connection.close("credentials revoked")
            return
        public = [name for name in connection.subscriptions if self.registry.owner_of(name) is None]
        for name in access.ended(connection, public):
            self.registry.unsubscribe(connection, name)
            self.registry.denials += 1
            self.refuse(connection, denial("subscribe", name, "subscription ended"))

    # -- the loop turn ---------------------------------------------------

    def schedule_flush(self, connection: Connection) -> None:
        """Have ``connection.flush()`` called once at the end of this loop iteration."""
        self._dirty.append(connection)
        if not self._flush_scheduled:
            self._schedule()

    def read_budget_spent(self, connection: Connection) -> None:
        """``connection`` read ``max_read_per_iteration`` bytes and holds reading: ``turn_over()`` it after the flush."""
        self._spent.append(connection)
        if not self._flush_scheduled:
            self._schedule()

    def _schedule_once(self) -> None:
        if not self._flush_scheduled:
            self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._flush_scheduled = True
        self._loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        """Once per loop iteration: fan each queue's new messages out, write, then read again.

        A subscriber gets the frames of everything published to a queue in
        this iteration in one append (or a few; :meth:`Pipeline.fan_out`).
        Connections whose read budget is spent are read again once their
        output has been written. No flush that raises stops the others: it is
        logged and counted (``delivery_errors``), and the flag that schedules
        this method is always cleared.
        """
        try:
            now = time.time()
            delivered = self.pipeline.fan_out(now)
            registry = self.registry
            registry.messages_out += delivered
            registry.rate_out.add(now, delivered)
            registry.rate_in.add(now, registry.messages_in - self._counted_in)
            self._counted_in = registry.messages_in
            dirty, self._dirty = self._dirty, []
            self._each(dirty, _FLUSH, "a flush")
        finally:
            self._flush_scheduled = False
            self.turn += 1
            spent, self._spent = self._spent, []
            self._each(spent, _TURN_OVER, "resuming its reading")
            if self._dirty or self.pipeline.busy or self._spent:  # a flush published more (an in-process bridge)
                self._schedule()

    def _each(self, connections: list[Connection], call: Callable[[Connection], Any], what: str) -> None:
        """``call`` each connection; one that raises is logged and counted, and the others go on."""
        for connection in connections:
            try:
                call(connection)
            except Exception:
                self.output_failed(connection, what)

    def output_failed(self, connection: Connection | None, what: str) -> None:
        """Log (with its traceback the 1st, 10th, 100th... time per connection) and count an output that raised."""
        self.registry.delivery_errors += 1
        if connection is None:
            logger.exception("%s failed; the other deliveries go on", what)
            return
        connection.delivery_errors += 1
        count = connection.delivery_errors
        if count == 10 ** (len(str(count)) - 1):
            logger.exception("connection %s (%s): %s failed (%d time(s) so far); the other deliveries go on",
                             connection.id, connection.peer, what, count)


def tls_context(config: BrokerConfig) -> ssl_module.SSLContext | None:
    """The server's TLS context from ``tls_cert``/``tls_key``, or None for plain TCP."""
    if not config.tls_cert:
        return None
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key or None)
    return context
