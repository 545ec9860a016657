"""The broker: what each frame does, whatever transport brought it.

:class:`Broker` owns the :class:`~coremq_broker.core.registry.Registry` and the TCP
listener. Every transport hands complete frames to :meth:`Broker.handle_frames`
and implements ``Connection.send``. Per publish the work is done once
(validate, stamp, encode the delivered frame); per subscriber it is an append
to that subscriber's output buffer, flushed once per loop iteration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
import time
import uuid
from typing import Any, Awaitable, Callable

from coremq_client import protocol as P
from coremq_client.codec import NESTING_CHECK_FROM, check_nesting, encode_frame, validate_queue_name
from coremq_client.errors import InvalidQueueName, MessageError, ProtocolError

from .access import ANONYMOUS, AccessPolicy, FailureTracker, Principal
from .config import BrokerConfig
from .control import ControlRequests, RequestError
from .limits import Bounds, LimitExceeded, keep, keep_run
from .durable import UNAVAILABLE, HistoryStore
from .version import PROTOCOL_VERSION, VERSION
from .registry import Connection, Queue, QueueSettings, Registry, splice_stamps

__all__ = ["Broker", "AccessPolicy", "VERSION"]

# The stamps as JSON members, in the order the dict path adds them (see handle_frames).
_STAMP_SENDER = b',"%s":' % P.SENDER.encode()
_STAMP_SENT = b',"%s":' % P.SENT.encode()
_STAMP_SERVER = b',"%s":' % P.SERVER.encode()
_STAMP_ID = b',"%s":' % P.ID.encode()


logger = logging.getLogger("coremq.broker")


class Broker(ControlRequests):
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
    ) -> None:
        self.config = config or BrokerConfig()
        self.codec = self.config.codec
        self._loads = self.codec.raw_loads
        self._dumps = self.codec.dumps
        self.access = access or AccessPolicy()
        self.authenticator = authenticator
        self.auth_failures = FailureTracker(limit=self.config.max_auth_failures)
        self.ssl = ssl if ssl is not None else tls_context(self.config)
        default = QueueSettings.from_config(self.config)
        self.bounds = Bounds(self.config, default)
        self.registry = Registry(queue_settings or (lambda name: default), self.bounds)
        self.host = self.config.host
        self.port = self.config.port
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty: list[Connection] = []
        self._dirty_queues: list[Queue] = []
        self._flush_scheduled = False
        self._counted_in = 0
        #: Flushes so far: a connection counts the bytes it reads per turn (max_read_per_iteration).
        self.turn = 0
        self._spent: list[Connection] = []  # connections not read until this turn's output is written
        self._max_blob = self.config.max_fanout_blob
        self._open_access = type(self.access) is AccessPolicy
        self._durable_all = self.config.durable_all
        # Stamps are spliced into what the decoder took only if that is strict UTF-8 JSON.
        self._splice = self.codec.strict
        self._set_address(f"{self.host}:{self.port}")
        self._closed: asyncio.Event | None = None
        self._closing = False
        self._store: HistoryStore | None = None
        # Publishers not read while many durable writes wait for the disk (flow control, as for a
        # congested subscriber): released once the writes drained (_ease_durable).
        self._durable_held: dict[Connection, None] = {}

    # -- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Bind the TCP listener; afterwards :attr:`port` is the bound port."""
        from ..transports.tcp import TcpConnection

        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self.bounds.start(self._loop, self.registry)
        if self._durable_all or os.path.exists(self.config.durable_path):
            await self._restore_durable_history()
        Broker._running = self
        self._server = await self._loop.create_server(
            lambda: TcpConnection(self), self.config.host, self.config.port, ssl=self.ssl, reuse_address=True
        )
        self.host, self.port = self._server.sockets[0].getsockname()[:2]
        self._set_address(f"{self.host}:{self.port}")
        logger.info("CoreMQ broker %r listening on %s%s", self.config.server_name, self.address,
                    " (TLS)" if self.ssl else "")

    def _set_address(self, address: str) -> None:
        self.address = address
        # The last stamps but the id, as the fast path splices them (see handle_frames).
        self._stamp_server = _STAMP_SERVER + self._dumps(address) + _STAMP_ID

    async def serve_forever(self) -> None:
        """Wait until :meth:`close` has finished."""
        if self._server is None:
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
        if self._store is not None:
            # Commit what is queued; the loop delivers and acknowledges it meanwhile.
            await asyncio.get_running_loop().run_in_executor(None, self._store.close)
            await asyncio.sleep(0)
        self._flush_dirty()  # this iteration's deliveries go out before the BYEs
        for connection in list(self.registry.connections.values()):
            try:
                self._send(connection, {"response": P.BYE})
                connection.shutdown()
            except Exception:  # one connection's failure does not keep the others from their BYE
                self._output_failed(connection, "the BYE")
                connection.abort()
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

    # -- durable history -------------------------------------------------

    def _history_store(self) -> HistoryStore:
        """The durable history's store, its writer started on first use (it reports a file it cannot write)."""
        if self._store is None:
            config = self.config
            self._store = HistoryStore(config.durable_path, synchronous=config.durable_synchronous,
                                       keep=lambda name: self.registry.queue_settings(name).history_length,
                                       max_pending=config.durable_max_pending,
                                       max_pending_bytes=config.durable_max_pending_bytes,
                                       retry_max=config.durable_retry_max, on_rewind=self._durable_rewind)
            assert self._loop is not None
            self._store.start(self._loop)
            logger.info("durable history in %s", config.durable_path)
        return self._store

    async def _restore_durable_history(self) -> None:
        """Load what the durable history holds, then start its writer; raise DurableHistoryError if unreadable."""
        assert self._loop is not None
        path = self.config.durable_path
        store = HistoryStore(path)
        saved = await self._loop.run_in_executor(None, store.load) if os.path.exists(path) else {}
        limit, self.bounds.max_queues = self.bounds.max_queues, 0  # durable queues come back whatever MAX_QUEUES says
        for name, rows in saved.items():
            queue = self.registry.queue(name)
            for message_id, body in rows:
                keep(self.bounds, self.registry, queue, (message_id, body, None))
            queue.last_id = rows[-1][0]
        self.bounds.max_queues = limit
        if saved:
            logger.info("restored the durable history of %d queue(s) from %s", len(saved), path)
        self._history_store()

    def _durable_rewind(self, spans: dict[str, tuple[int, int]]) -> None:
        """Give back the ids ``(first, last)`` of each queue's durable writes that failed.

        They were the newest of their queue, so the next stored message takes
        ``first`` and no resuming client sees a gap. Only if the queue took
        later ids meanwhile (its settings stopped making it durable) are they
        skipped, and that is logged.
        """
        for name, (first, last) in spans.items():
            queue = self.registry.queues.get(name)
            if queue is not None and queue.last_id == last:
                queue.last_id = first - 1
            elif queue is not None:
                logger.warning("queue %r: ids %d to %d were not stored and are skipped", name, first, last)

    # -- connections -----------------------------------------------------

    def new_connection_id(self) -> str:
        return str(uuid.uuid4())

    def connection_made(self, connection: Connection) -> None:
        """Register ``connection`` and send it the welcome frame (or refuse it: too many)."""
        if len(self.registry.connections) >= self.config.max_connections:
            logger.warning("refused a connection from %s: %d connections is the limit",
                           connection.peer, self.config.max_connections)
            connection.send(self.encode_reply(connection, {
                "response": f"ERROR: too many connections: limit is {self.config.max_connections}"}))
            connection.close()
            return
        refusal = self.bounds.admit(connection)
        if refusal is not None:
            logger.warning("refused a connection from %s: %s", connection.peer, refusal)
            self.send_error(connection, refusal)
            connection.close()
            return
        connection.publish_limit = self.config.max_publish_rate
        self.registry.add(connection)
        logger.info("connection %s from %s (%s)", connection.id, connection.peer, connection.transport_name)
        self._send(connection, {
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

    def _schedule(self) -> None:
        assert self._loop is not None
        self._flush_scheduled = True
        self._loop.call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        """Once per loop iteration: fan each queue's new messages out, write, then read again.

        A subscriber gets the concatenated frames of everything published to a
        queue in this iteration in one append (or a few, of at most
        ``max_fanout_blob`` bytes each), so fan-out costs one append per
        subscriber per iteration, not per message. Connections whose read
        budget is spent are read again once their output has been written.

        No delivery or flush that raises stops the others: it is logged and
        counted (``delivery_errors``), and the flag that schedules this method
        is always cleared.
        """
        try:
            queues, self._dirty_queues = self._dirty_queues, []
            now = time.time()
            delivered = 0
            for queue in queues:
                try:
                    delivered += self._fan_out_pending(queue, now)
                except Exception:
                    self._output_failed(None, f"the fan-out of queue {queue.name!r}")
            registry = self.registry
            registry.messages_out += delivered
            registry.rate_out.add(now, delivered)
            registry.rate_in.add(now, registry.messages_in - self._counted_in)
            self._counted_in = registry.messages_in
            dirty, self._dirty = self._dirty, []
            for connection in dirty:
                try:
                    connection.flush()
                except Exception:
                    self._output_failed(connection, "a flush")
        finally:
            self._flush_scheduled = False
            self.turn += 1
            spent, self._spent = self._spent, []
            for connection in spent:
                try:
                    connection.turn_over()  # type: ignore[attr-defined]  # only TcpConnection spends a budget
                except Exception:
                    self._output_failed(connection, "resuming its reading")
            if self._dirty or self._dirty_queues or self._spent:  # a flush published more (an in-process bridge)
                self._schedule()

    def _output_failed(self, connection: Connection | None, what: str) -> None:
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

    def _fan_out_pending(self, queue: Queue, now: float) -> int:
        """Hand this iteration's frames of ``queue`` to its subscribers; hold the publishers of congested ones."""
        entries, queue.pending = queue.pending, []
        if len(entries) == 1:
            queue.rate.add(now, entries[0][1])
            groups = [entries] if len(entries[0][0]) <= self._max_blob else _pieces(entries, self._max_blob)
        else:
            queue.rate.add(now, sum([entry[1] for entry in entries]))
            groups = _pieces(entries, self._max_blob)
        subscribers = tuple(queue.subscribers)  # a delivery may end a subscription
        delivered = 0
        congested: list[Connection] = []
        for group in groups:
            delivered += self._deliver_group(queue, group, subscribers, congested)
        if congested:
            senders = {entry[3] for entry in entries if entry[3] is not None}
            for subscriber in dict.fromkeys(congested):
                for sender in senders:
                    subscriber.hold_publisher(sender, queue.name)
        return delivered

    def _deliver_group(self, queue: Queue, entries: list[tuple[bytes, int, Connection | None, Connection | None]],
                       subscribers: tuple[Connection, ...], congested: list[Connection]) -> int:
        """Deliver ``entries`` joined to ``subscribers``; add the congested ones to ``congested``."""
        if len(entries) == 1:
            blob, count, skip, _ = entries[0]
            skipping = {skip} if skip is not None else None
        else:
            blob = b"".join([entry[0] for entry in entries])
            count = sum([entry[1] for entry in entries])
            skipping = {entry[2] for entry in entries if entry[2] is not None} or None
        delivered = 0
        for subscriber in subscribers:
            try:
                if skipping is not None and subscriber in skipping:
                    # A publisher subscribed to its own queue (without echo) skips its own frames.
                    mine = [entry for entry in entries if entry[2] is not subscriber]
                    if not mine:
                        continue
                    data = b"".join([entry[0] for entry in mine])
                    n = sum([entry[1] for entry in mine])
                else:
                    data = blob
                    n = count
                if subscriber.deliver(data):
                    congested.append(subscriber)
                subscriber.messages_out += n
                delivered += n
            except Exception:
                self._output_failed(subscriber, f"a delivery on queue {queue.name!r}")
        return delivered

    # -- frames ----------------------------------------------------------

    def protocol_error(self, connection: Connection, error: ProtocolError) -> None:
        """Answer a frame that broke the protocol; the transport closes on fatal ones."""
        connection.requests += 1
        self.registry.errors += 1
        logger.warning("connection %s (%s): %s", connection.id, connection.peer, error)
        self._reply_error(connection, str(error))

    def handle_frame(self, connection: Connection, frame: tuple[str, bytes]) -> None:
        """Carry out one ``(queue, body)`` frame from ``connection``; never raises for bad input."""
        self.handle_frames(connection, [frame])

    def handle_frames(self, connection: Connection, frames: list[tuple[str, bytes]]) -> None:
        """Carry out the frames of one read from ``connection`` in order; never raises for bad input.

        The common case is a plain publish: a non-empty JSON object that ends
        in its closing brace and carries no stamp of its own, to a queue that
        keeps no durable history and has no size limit. Consecutive plain
        publishes to one queue form a run; per message the loop below only
        decodes (to validate) and collects, and :meth:`_end_run` stores,
        formats and delivers the run, and formats its replies, in a few calls.
        Plain publishes are not re-encoded: the stamps, the same for every
        publish of one read but the id, go in before each closing brace.
        Anything else ends the run first, so replies keep the order of the
        requests, and takes the general path.
        """
        registry = self.registry
        loads = self._loads
        stamp_keys = P.STAMP_KEYS
        registry.messages_in += len(frames)
        connection.messages_in += len(frames)
        requests = connection.requests  # frame i of this read is request requests + i + 1
        now = time.time()  # the messages of one read arrived together
        stamps = b'%s"%s"%s%s%s' % (_STAMP_SENDER, connection.id_bytes, _STAMP_SENT, self._dumps(now),
                                      self._stamp_server)
        run_name: str | None = None  # the queue of the current run (None: no run)
        run_queue: Queue | None = None
        run_first = 0  # the index in frames of the run's first message
        bodies: list[bytes] = []
        replies: list[bytes] = []  # replies to runs, sent before anything else is
        for index, (name, body) in enumerate(frames):
            if connection.authenticating:  # what follows a login waits for its answer
                connection.held_frames.extend(frames[index:])
                registry.messages_in -= len(frames) - index  # counted when they are carried out
                connection.messages_in -= len(frames) - index
                break
            try:  # the door: what passes can be encoded again by every path that may carry it
                if len(body) >= NESTING_CHECK_FROM:
                    check_nesting(body)
                message = loads(body)
            except MessageError as exc:
                message = exc
            except (ValueError, TypeError, RecursionError) as exc:
                message = MessageError(f"invalid JSON: {exc}")
            # A non-empty object that ends in its brace and has no stamp of its own.
            plain = (message.__class__ is dict and body[-1] == 0x7D and message
                     and message.keys().isdisjoint(stamp_keys))
            if plain and name is run_name:  # the next message of the current run
                bodies.append(body)
                continue
            if run_queue is not None:
                self._end_run(connection, run_queue, bodies, requests + run_first + 1, stamps, now, replies)
                run_name = run_queue = None
            connection.requests = requests + index + 1
            if plain and (queue := self._plain_queue(connection, name)) is not None:
                run_name, run_queue, run_first, bodies = name, queue, index, [body]
                continue
            if replies:
                connection.send(b"".join(replies))
                replies = []
            self._handle_other(connection, name, body, message)
            if connection.closing:  # a request closed it (an administrator's disconnect of itself)
                return
        else:
            index = len(frames)
        if run_queue is not None:
            self._end_run(connection, run_queue, bodies, requests + run_first + 1, stamps, now, replies)
        if replies:
            connection.send(b"".join(replies))
        connection.requests = requests + index

    def _plain_queue(self, connection: Connection, name: str) -> Queue | None:
        """The queue named ``name`` if a plain publish to it may take the fast path; else None."""
        queue = self.registry.queues.get(name)
        if (queue is None or not queue.plain or name == connection.id or self._durable_all
                or connection.publish_limit or not self._splice):
            return None
        if not self._open_access and queue.owner != connection.id and not connection.publish_grants.get(name):
            return None  # denied, or not asked yet: the general path asks the policy (and remembers)
        return queue

    def _handle_other(self, connection: Connection, name: str, body: bytes, message: Any) -> None:
        """Every frame that is not part of a run: control requests, other publishes, errors."""
        try:
            if isinstance(message, MessageError):
                raise message
            if name == connection.id and isinstance(message, dict) and self._is_control(message):
                self._control(connection, message)
            else:
                self._publish(connection, name, message, len(body))
        except (RequestError, InvalidQueueName, MessageError, LimitExceeded) as exc:
            self.registry.errors += 1
            logger.warning("connection %s (%s): %s", connection.id, connection.peer, exc)
            self._reply_error(connection, str(exc), queue=name)

    def _end_run(self, connection: Connection, queue: Queue, bodies: list[bytes], first_request: int,
                 stamps: bytes, now: float, replies: list[bytes]) -> None:
        """Store and deliver a run of plain publishes to ``queue``; add their replies to ``replies``.

        The messages get the ids after ``queue.last_id`` in order; the requests
        are numbered from ``first_request``. The run's frames are joined into
        one blob for the fan-out.
        """
        count = len(bodies)
        first_id = queue.last_id + 1
        queue.last_id = first_id + count - 1
        queue.published += count
        queue.last_publish = now
        if count == 1:  # one message in flight: the fewest calls
            body = splice_stamps(bodies[0], stamps, first_id)
            keep(self.bounds, self.registry, queue, (first_id, body, None))
            if queue.subscribers:
                self._pend(queue, b"+%d %s %s" % (queue.name_length + len(body), queue.name_bytes, body), 1,
                           connection)
            else:
                queue.rate.add(now)
            if connection.replies:
                size = connection.reply_size + len(str(first_id)) + len(str(first_request))
                replies.append(connection.reply_format % (size, first_id, first_request))
            return
        keep_run(self.bounds, self.registry, queue, first_id, bodies, stamps)
        if queue.subscribers:
            # One format per frame, whose size is known but for the body: the digits of the id
            # are tracked, not counted.
            frame = queue.frame_format + stamps.replace(b"%", b"%%") + b"%d}"
            limit = _power_of_ten_above(first_id)
            base = queue.name_length + len(stamps) + len(str(limit)) - 1
            frames = []
            message_id = first_id
            for body in bodies:
                if message_id >= limit:
                    limit *= 10
                    base += 1
                size = len(body)
                frames.append(frame % (base + size, size - 1, body, message_id))
                message_id += 1
            self._pend(queue, b"".join(frames), count, connection)
        else:
            queue.rate.add(now, count)  # with subscribers, counted per batch at the fan-out
        if connection.replies:
            reply = connection.reply_format
            id_limit = _power_of_ten_above(first_id)
            request_limit = _power_of_ten_above(first_request)
            size = connection.reply_size + len(str(id_limit)) + len(str(request_limit)) - 2
            request = first_request
            for message_id in range(first_id, first_id + count):
                if message_id >= id_limit:
                    id_limit *= 10
                    size += 1
                if request >= request_limit:
                    request_limit *= 10
                    size += 1
                replies.append(reply % (size, message_id, request))
                request += 1

    def _pend(self, queue: Queue, blob: bytes, count: int, sender: Connection | None) -> None:
        """Queue ``count`` frames from ``sender`` for this iteration's fan-out.

        A sender subscribed to the queue gets them only with ``echo`` on.
        """
        skip = sender if sender is not None and not sender.echo and sender in queue.subscribers else None
        pending = queue.pending
        if not pending:
            self._dirty_queues.append(queue)
            if not self._flush_scheduled:
                self._schedule()
        pending.append((blob, count, skip, sender))

    def _check_publish(self, connection: Connection, name: str) -> None:
        """The access policy's word on publishing to ``name``, remembered per connection."""
        grants = connection.publish_grants
        allowed = grants.get(name)
        if allowed is None:
            if len(grants) >= 1000:
                grants.clear()
            allowed = grants[name] = self.access.allows(connection, "publish", name)
        if not allowed:
            self._deny(connection, "publish", name)

    @staticmethod
    def _is_control(message: dict) -> bool:
        for key in message:
            if key.startswith("coremq_") and key not in P.STAMP_KEYS and key not in (P.STRING, P.ARRAY):
                return True
        return False

    def _reply(self, connection: Connection, reply: dict, request: int | None = None) -> None:
        reply["request"] = connection.requests if request is None else request
        self._send(connection, reply)

    def _reply_error(self, connection: Connection, reason: str, **extra: Any) -> None:
        self._reply(connection, {"response": f"ERROR: {reason}", **extra})

    def encode_reply(self, connection: Connection, reply: dict) -> bytes:
        """The frame carrying ``reply`` on the connection's id queue."""
        return encode_frame(connection.id, self.codec.dumps(reply))

    def error_frame(self, connection: Connection, reason: str) -> bytes:
        """The frame of an ``ERROR:`` that answers no particular request."""
        return self.encode_reply(connection, {"response": f"ERROR: {reason}"})

    def send_error(self, connection: Connection, reason: str) -> None:
        connection.send(self.error_frame(connection, reason))

    def _send(self, connection: Connection, reply: dict) -> None:
        connection.send(self.encode_reply(connection, reply))

    # -- publish ---------------------------------------------------------

    def _publish(self, connection: Connection, name: str, message: Any, size: int) -> None:
        """Every publish that :meth:`handle_frame`'s fast path does not take."""
        if connection.publish_limit and not connection.may_publish():
            raise RequestError(f"publish rate limit exceeded: {connection.publish_limit} per second")
        if isinstance(message, dict):
            stored = message
        elif isinstance(message, str):
            stored = {P.STRING: message}
        elif isinstance(message, list):
            stored = {P.ARRAY: message}
        else:
            raise MessageError(f"a message must be a JSON object, array or string, not {_json_type(message)}")
        queue = self.registry.queues.get(name)
        if queue is None:
            validate_queue_name(name, self.config.max_queue_name_length)
            if self.registry.is_closed_address(name):
                # A closed connection's id never becomes a public queue: what is sent there is lost.
                self.registry.dead_letters += 1
                raise RequestError(f"no such connection: message to {name!r} dropped")
            if self.registry.owner_of(name) != connection.id:
                self._check(connection, "publish", name)
            queue = self.registry.queue(name)
        elif not self._open_access and queue.owner != connection.id:
            # Point-to-point sending follows the publish rules too; one's own queues are one's own.
            self._check_publish(connection, name)
        settings = queue.settings
        if settings.max_message_size is not None and size > settings.max_message_size:
            raise RequestError(f"message too large: {size} bytes, limit for queue {name!r} "
                               f"is {settings.max_message_size}")
        if (settings.durable or self._durable_all) and queue.owner is None:
            self._publish_durable(connection, queue, stored)
            return
        self.deliver(queue, stored, sender=connection)
        if connection.replies:
            self._reply(connection, {"response": P.OK_SENT, "id": queue.last_id})

    def set_access(self, access: AccessPolicy) -> None:
        """Apply a new access policy to new requests and to live connections at once.

        Connections whose credentials were revoked are closed; subscriptions the
        policy no longer allows end, each with an ``ERROR: permission denied``.
        """
        self.access = access
        self._open_access = type(access) is AccessPolicy
        for connection in list(self.registry.connections.values()):
            self.enforce(connection)

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
        for name in sorted(connection.subscriptions):
            if self.registry.owner_of(name) is None and not access.allows(connection, "subscribe", name):
                self.registry.unsubscribe(connection, name)
                self.registry.denials += 1
                self.send_error(connection, f"permission denied: subscribe on queue {name!r} (subscription ended)")

    def _publish_durable(self, connection: Connection, queue: Queue, stored: dict) -> None:
        """Write to disk first; keep, deliver and acknowledge once committed.

        A write that fails, or a publish refused because the store is
        unavailable or too many writes wait for the disk, is answered
        ``ERROR: durable history unavailable: <reason>`` (logged by the store
        once per change of state, not per message) and is neither kept nor
        delivered.
        """
        store = self._history_store()
        refusal = store.refusal()
        if refusal is not None:
            self.registry.errors += 1
            self._reply_error(connection, refusal, queue=queue.name)
            return
        body = self._stamp(queue, stored, connection)
        message_id = queue.last_id
        request = connection.requests

        def committed() -> None:
            self._fan_out(queue, message_id, stored, body, connection)
            if connection.replies and not connection.closing:
                self._reply(connection, {"response": P.OK_SENT, "id": message_id}, request)
            self._ease_durable(store)

        def failed(reason: str) -> None:
            self.registry.errors += 1
            if not connection.closing:
                self._reply(connection, {"response": f"ERROR: {UNAVAILABLE}: {reason}", "queue": queue.name}, request)
            self._ease_durable(store)

        store.write(queue.name, message_id, body, committed, failed)
        # A healthy disk that a publisher outruns slows the publisher (it is not read until the writes
        # drain to an eighth of the limits), so the limits refuse only what one read already held.
        if ((store.pending >= store.max_pending // 4 or store.pending_bytes >= store.max_pending_bytes // 4)
                and connection not in self._durable_held and not connection.closing):
            self._durable_held[connection] = None
            connection.hold()

    def _ease_durable(self, store: HistoryStore) -> None:
        """Read the publishers held for the disk again once its writes drained (or failed)."""
        if self._durable_held and (store.pending <= store.max_pending // 8
                                   and store.pending_bytes <= store.max_pending_bytes // 8 or store.error is not None):
            held, self._durable_held = self._durable_held, {}
            for connection in held:
                connection.release()

    def deliver(self, queue: Queue, stored: dict, sender: Connection | None = None) -> bytes:
        """Stamp ``stored``, keep it in ``queue``'s history and fan it out, encoded once.

        Every subscriber but ``sender`` gets the frame, which is returned.
        """
        body = self._stamp(queue, stored, sender)
        self._fan_out(queue, queue.last_id, stored, body, sender)
        return encode_frame(queue.name, body)

    def _stamp(self, queue: Queue, stored: dict, sender: Connection | None) -> bytes:
        """Number and stamp a message; return its JSON. The id is taken once the JSON is made."""
        body = self._stamp_as(sender, stored, queue.last_id + 1, time.time())
        queue.last_id += 1
        return body

    def _stamp_as(self, sender: Connection | None, stored: dict, message_id: int, now: float) -> bytes:
        """Stamp ``stored`` as sent by ``sender`` (None: the server) at ``now``; return its JSON."""
        if sender is None:
            stored[P.SENDER] = self.config.server_name
        elif not (isinstance(claimed := stored.get(P.SENDER), str) and claimed.startswith(sender.id + "/")):
            # A connection may speak as one of its own sub-addresses (a bridge for
            # its browsers); any other claimed sender is overwritten.
            stored[P.SENDER] = sender.id
        stored[P.SENT] = now
        stored[P.SERVER] = self.address
        stored[P.ID] = message_id
        return self._dumps(stored)

    def _fan_out(self, queue: Queue, message_id: int, stored: dict, body: bytes, sender: Connection | None) -> None:
        """Keep the message (``stored``, encoded as ``body``) in history and queue it for this iteration's fan-out."""
        queue.last_publish = stored[P.SENT]  # before keep(): a trim it starts takes this queue as the newest
        keep(self.bounds, self.registry, queue, (message_id, body, None))
        queue.published += 1
        if queue.subscribers:
            self._pend(queue, encode_frame(queue.name, body), 1, sender)
        else:
            queue.rate.add(queue.last_publish)  # with subscribers, counted per batch at the fan-out


def _pieces(entries: list[tuple[bytes, int, Connection | None, Connection | None]],
            limit: int) -> list[list[tuple[bytes, int, Connection | None, Connection | None]]]:
    """``entries`` in groups whose frames add up to at most ``limit`` bytes, in order.

    An entry larger than ``limit`` is cut at frame boundaries (a frame larger
    than ``limit`` goes alone).
    """
    groups: list[list[tuple[bytes, int, Connection | None, Connection | None]]] = []
    group: list[tuple[bytes, int, Connection | None, Connection | None]] = []
    size = 0
    for entry in entries:
        blob = entry[0]
        if len(blob) > limit:
            if group:
                groups.append(group)
                group, size = [], 0
            groups.extend([(piece, count, entry[2], entry[3])] for piece, count in _cut(blob, limit))
            continue
        if group and size + len(blob) > limit:
            groups.append(group)
            group, size = [], 0
        group.append(entry)
        size += len(blob)
    if group:
        groups.append(group)
    return groups


def _cut(blob: bytes, limit: int) -> list[tuple[bytes, int]]:
    """A run of frames this broker encoded, in pieces of at most ``limit`` bytes (whole frames), with their counts."""
    pieces = []
    start = position = 0
    count = 0
    end = len(blob)
    while position < end:
        space = blob.index(b" ", position)
        following = space + 1 + int(blob[position + 1 : space])
        if following - start > limit and count:
            pieces.append((blob[start:position], count))
            start, count = position, 0
        position = following
        count += 1
    pieces.append((blob[start:], count))
    return pieces


def _power_of_ten_above(number: int) -> int:
    """The least power of ten above ``number`` (>= 0): 10 ** (its number of digits)."""
    return 10 ** len(str(number))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def tls_context(config: BrokerConfig) -> ssl_module.SSLContext | None:
    """The server's TLS context from ``tls_cert``/``tls_key``, or None for plain TCP."""
    if not config.tls_cert:
        return None
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key or None)
    return context
