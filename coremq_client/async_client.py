"""The asyncio CoreMQ client: :class:`AsyncMessageQueue`, the sync client's API as coroutines.

Mirrors :mod:`coremq_client.sync_client` part for part: one reader task per
client feeds :class:`~coremq_client.protocol.ClientProtocol`, completes reply
futures by request number, queues deliveries and reconnects with backoff,
logging in again, replaying subscriptions and options and fetching what it
missed. Writes need no lock: numbering a request
and handing its frame to the transport happen in one step of the event loop;
``drain()`` then applies asyncio's flow control.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl as ssl_module
from typing import Any, AsyncIterator, Callable, Mapping

from ._common import (
    ConnectCallback,
    ErrorCallback,
    ErrorReporter,
    GapCallback,
    GapReporter,
    HistoryPages,
    JSONObject,
    MAX_PENDING,
    PendingReplies,
    Routed,
    SessionState,
    backoff_delays,
    check_backoff,
    check_max_pending,
    credentials_from,
    deadline_after,
    handshake_reply,
    logger,
    notify_connected,
    remaining,
    resume_batch,
    route,
    settle,
    since_map,
    split_welcome,
    user_of,
)
from .codec import DEFAULT_MAX_FRAME_SIZE, DEFAULT_PORT, Decoder, Encoder, JSONCodec, validate_queue_name
from .errors import AuthenticationFailed, ConnectionClosed, CoreMQError, ServerError, Timeout
from .protocol import ClientProtocol, Delivery, Gap, Welcome, wrap
from ._state import ClientState
from .resume import RESUME_PAGE, Item, Resumer

__all__ = ["AsyncMessageQueue"]

_READ_SIZE = 2**16
_Build = Callable[[ClientProtocol], tuple[int, bytes]]
_END = object()  # put on the delivery queue when no message can come any more


class _Connection:
    """One stream pair with its protocol state, its pending replies and events read with the welcome."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol,
                 welcome: Welcome, backlog: list[Any]) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self.welcome = welcome
        self.backlog = backlog
        self.pending: PendingReplies[asyncio.Future[JSONObject]] = PendingReplies()
        self.resyncs: dict[int, dict[str, int]] = {}  # history requests of the resume, by number

    @property
    def alive(self) -> bool:
        return self.pending.closed is None and not self.writer.is_closing()


class AsyncMessageQueue(ClientState):
    """An asyncio CoreMQ client that reconnects by itself; see :class:`~coremq_client.MessageQueue`.

    Same constructor and semantics, logging in, resuming without loss,
    ``max_pending`` and the repair of dropped messages included (the reader
    task stops reading while ``max_pending`` messages wait for
    :meth:`receive`); every request is a coroutine. ``on_error``, ``on_connect`` and
    ``on_gap`` may be plain functions or coroutine functions (then they run
    as tasks). Use from one event loop only.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        queues: tuple[str, ...] | list[str] = (),
        options: Mapping[str, Any] | None = None,
        timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        reconnect: bool = True,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        encoder: Encoder = None,
        decoder: Decoder = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl: ssl_module.SSLContext | None = None,
        token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        resume: bool = True,
        on_error: ErrorCallback | None = None,
        on_connect: ConnectCallback | None = None,
        on_gap: GapCallback | None = None,
        max_pending: int | None = MAX_PENDING,
    ) -> None:
        check_backoff(backoff, max_backoff)
        check_max_pending(max_pending)
        self._credentials = credentials_from(token, username, password)
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.codec = JSONCodec(encoder, decoder)
        self.max_frame_size = max_frame_size
        self.ssl = ssl
        self.max_pending = max_pending
        self._state = SessionState(queues, options)
        self._resumer = Resumer(enabled=resume, max_held=max_pending)
        self._reporter = ErrorReporter(on_error)
        self._gap_reporter = GapReporter(on_gap)
        self._on_connect = on_connect
        self._callbacks: set[asyncio.Future[Any]] = set()
        self._deliveries: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()  # set by receive(): the reader waits on it while max_pending messages wait
        self._connect_lock = asyncio.Lock()
        self._stop = asyncio.Event()  # set by close(); wakes backoff sleeps
        self._changed = asyncio.Event()  # set (and replaced) whenever _conn or _ended changes
        self._conn: _Connection | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._ended: ConnectionClosed | None = None
        self._orderly = False
        self._welcome: Welcome | None = None
        self._user: str | None = None
        self._auth_failure: AuthenticationFailed | None = None  # set while waiting for new credentials
        self._credentials_changed = asyncio.Event()

    # -- state: the read-only properties are ClientState's ----------------------

    def set_credentials(self, *, token: str | None = None, username: str | None = None,
                        password: str | None = None) -> None:
        """Log in with these from the next connection on; see :meth:`MessageQueue.set_credentials`."""
        self._credentials = credentials_from(token, username, password)
        self._auth_failure = None
        self._credentials_changed.set()
        self._credentials_changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- connecting ----------------------------------------------------------

    async def connect(self) -> None:
        """Connect, read the welcome and apply queues and options; see :meth:`MessageQueue.connect`."""
        deadline = deadline_after(self.connect_timeout)
        async with self._connect_lock:
            if self._ended is not None:
                raise ConnectionClosed(f"client is closed: {self._ended}")
            if self._reader_task is not None:
                await self._wait_connection(deadline)
                return
            conn, replayed = await self._establish_with_retries(deadline, first_delay=False, wait=True)
            if self._stop.is_set():
                conn.writer.close()
                raise ConnectionClosed("client is closed")
            self._conn = conn
            self._reader_task = asyncio.create_task(self._run(conn), name=f"coremq-reader-{self.host}:{self.port}")
            self._notify()
            self._connected(conn)
        for future in replayed:
            await self._result(future, deadline)

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if close() was called meanwhile."""
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    async def _establish_with_retries(
        self, deadline: float | None, *, first_delay: bool, wait: bool
    ) -> tuple[_Connection, list[asyncio.Future[JSONObject]]]:
        delays = backoff_delays(self.backoff, self.max_backoff)
        if first_delay and await self._sleep(next(delays)):
            raise ConnectionClosed("client is closed")
        while True:
            try:
                return await self._establish(deadline, wait=wait)
            except (ConnectionClosed, Timeout):
                if not self.reconnect or self._stop.is_set():
                    raise
                delay = next(delays)
                left = remaining(deadline)
                if left is not None and left <= delay:
                    raise
            except ServerError as exc:
                if wait or isinstance(exc, AuthenticationFailed):
                    raise
                self._report(exc)  # say, too many connections for this user: try again later
                delay = next(delays)
            if await self._sleep(delay):
                raise ConnectionClosed("client is closed")

    async def _establish(self, deadline: float | None, *, wait: bool) -> tuple[_Connection, list[asyncio.Future[JSONObject]]]:
        """One attempt: open the streams, read the welcome, log in, send the replay and resume requests."""
        limit = remaining(deadline) if deadline is not None else self.connect_timeout
        try:
            async with asyncio.timeout(limit):
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectionClosed(f"cannot connect to {self.host}:{self.port}: {exc!r}") from exc
        try:
            protocol = ClientProtocol(codec=self.codec, max_frame_size=self.max_frame_size)
            async with asyncio.timeout(remaining(deadline) if deadline is not None else self.connect_timeout):
                welcome, backlog = await self._read_welcome(reader, protocol)
            self._resumer.connected(welcome.connection_id)
            credentials = self._credentials
            user = None
            if credentials:
                async with asyncio.timeout(remaining(deadline) if deadline is not None else self.timeout):
                    user = await self._log_in(reader, writer, protocol, credentials, backlog)
            conn = _Connection(reader, writer, protocol, welcome, backlog)
            futures = self._replay(conn, wait)
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except CoreMQError:
            writer.close()
            raise
        except TimeoutError as exc:
            writer.close()
            raise Timeout(f"{self.host}:{self.port} did not answer in time while connecting") from exc
        except OSError as exc:
            writer.close()
            raise ConnectionClosed(f"connection to {self.host}:{self.port} failed: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        self._welcome = welcome
        self._user = user
        return conn, futures

    async def _log_in(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: ClientProtocol,
                      credentials: dict[str, str], backlog: list[Any]) -> str | None:
        """Send ``coremq_auth`` and wait for its answer; what else arrives meanwhile joins ``backlog``."""
        number, data = protocol.authenticate(credentials)
        writer.write(data)
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise ConnectionClosed(f"{self.host}:{self.port} closed the connection while logging in")
            reply = handshake_reply(protocol.receive_data(data), number, backlog)
            if reply is not None:
                return user_of(reply)

    def _replay(self, conn: _Connection, wait: bool) -> list[asyncio.Future[JSONObject]]:
        """Write the subscriptions and options, then the resume's history request."""
        futures: list[asyncio.Future[JSONObject]] = []
        for number, data in self._state.replay(conn.protocol):
            if wait:
                futures.append(asyncio.get_running_loop().create_future())
                conn.pending.add(number, futures[-1])
            conn.writer.write(data)
        if self.reconnect:  # without reconnects there is nothing to resume
            self._resync(conn, self._resumer.plan(self._state.queues))
        return futures

    @staticmethod
    def _resync(conn: _Connection, since: dict[str, int]) -> None:
        """Write a history request of the resume, registered so the reader hands its reply to the resumer."""
        if since:
            number, data = conn.protocol.get_history(list(since), since, limit=RESUME_PAGE)
            conn.resyncs[number] = since
            conn.writer.write(data)

    async def _read_welcome(self, reader: asyncio.StreamReader, protocol: ClientProtocol) -> tuple[Welcome, list[Any]]:
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                raise ConnectionClosed(f"{self.host}:{self.port} closed the connection before the welcome")
            welcome, backlog = split_welcome(protocol.receive_data(data))
            if welcome is not None:
                return welcome, backlog

    async def _wait_connection(self, deadline: float | None) -> _Connection:
        """The live connection, waiting for a reconnect until ``deadline``."""
        while True:
            if self._ended is not None:
                raise ConnectionClosed(str(self._ended))
            if self._auth_failure is not None:
                raise AuthenticationFailed(self._auth_failure.reason, self._auth_failure.request)
            conn = self._conn
            if conn is not None and conn.alive:
                return conn
            if self._reader_task is None:
                raise ConnectionClosed("not connected: call connect() first")
            try:
                async with asyncio.timeout(remaining(deadline)):
                    await self._changed.wait()
            except TimeoutError:
                raise ConnectionClosed(f"not connected to {self.host}:{self.port} within {self.timeout} s") from None

    # -- the reader task ---------------------------------------------------------

    async def _run(self, conn: _Connection) -> None:
        error, orderly = ConnectionClosed("client is closed"), True
        try:
            while True:
                error, orderly = await self._read(conn)
                self._lose(conn, error)
                if self._stop.is_set() or not self.reconnect:
                    break
                logger.info("connection to %s:%s lost (%s); reconnecting", self.host, self.port, error)
                next_conn = await self._reconnect()
                if next_conn is None:
                    break  # only when closing
                conn = next_conn
        except Exception as exc:  # pragma: no cover - a bug; never leave callers hanging
            logger.exception("CoreMQ reader task failed")
            error, orderly = ConnectionClosed(f"reader failed: {exc!r}"), False
        finally:
            if self._conn is not None:
                self._lose(self._conn, error)
            self._end(error, orderly=orderly or self._stop.is_set())

    async def _reconnect(self) -> _Connection | None:
        """Connect again (with backoff), waiting for new credentials if these are refused; None once closed."""
        while True:
            try:
                conn, _ = await self._establish_with_retries(None, first_delay=True, wait=False)
            except AuthenticationFailed as exc:
                if not await self._await_credentials(exc):
                    return None
                continue
            except (ConnectionClosed, Timeout):
                return None
            if self._stop.is_set():
                conn.writer.close()
                return None
            self._conn = conn
            self._notify()
            self._connected(conn)
            return conn

    async def _await_credentials(self, failure: AuthenticationFailed) -> bool:
        """Report refused credentials and wait for set_credentials(); False if closed meanwhile."""
        logger.error("%s:%s refused the credentials; waiting for new ones", self.host, self.port)
        self._report(failure)
        self._auth_failure = failure
        self._notify()  # waiting requests raise it
        changed = asyncio.ensure_future(self._credentials_changed.wait())
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([changed, stopped], return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopped.cancel()
        return not self._stop.is_set()

    async def _read(self, conn: _Connection) -> tuple[ConnectionClosed, bool]:
        """Read and dispatch until the connection ends: ``(why, orderly)``."""
        routed = route(conn.backlog)
        while True:
            self._act(routed, conn)
            if routed.ended is not None:
                return routed.ended, routed.orderly
            await self._wait_for_room()
            try:
                data = await conn.reader.read(_READ_SIZE)
            except OSError as exc:
                return ConnectionClosed(f"connection lost: {exc}"), False
            if not data:
                return ConnectionClosed("connection closed"), self._stop.is_set()
            routed = route(conn.protocol.receive_data(data))

    async def _wait_for_room(self) -> None:
        """While ``max_pending`` messages wait for receive(), do not read (TCP pushes back on the broker)."""
        limit = self.max_pending
        while limit is not None and self._deliveries.qsize() >= limit and not self._stop.is_set():
            self._room.clear()
            await self._room.wait()

    def _act(self, routed: Routed, conn: _Connection) -> None:
        """Deliver, report and settle one batch; the resume's history replies and drop notices go to the resumer."""
        items, requests, replies = resume_batch(self._resumer, conn.resyncs, routed, self._state)
        self._dispatch(items)
        for since in requests:
            self._resync(conn, since)
        for error in routed.errors:
            self._report(error)
        settle(replies, conn.pending, self._report)

    def _dispatch(self, items: list[Item]) -> None:
        for item in items:
            if isinstance(item, Gap):
                self._keep(self._gap_reporter.report(item))
            else:
                self._deliveries.put_nowait(item)

    def _report(self, error: CoreMQError) -> None:
        self._keep(self._reporter.report(error))

    def _connected(self, conn: _Connection) -> None:
        """Hand the welcome of a new connection to ``on_connect``."""
        self._keep(notify_connected(self._on_connect, conn.welcome.message))

    def _keep(self, result: Any) -> None:
        """Run what a callback returned, if it is awaitable, as a task kept until it ends."""
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)

    def _lose(self, conn: _Connection, error: ConnectionClosed) -> None:
        conn.pending.close(error)
        conn.writer.close()
        if self._conn is conn:
            self._conn = None
        self._notify()

    def _end(self, error: ConnectionClosed, *, orderly: bool) -> None:
        if self._ended is not None:
            return
        self._ended, self._orderly = error, orderly
        self._notify()
        self._deliveries.put_nowait(_END)

    # -- requests --------------------------------------------------------------

    async def _request(self, build: _Build, *, reply: bool = True, retry: bool = True) -> JSONObject | None:
        """Send one frame and wait for its reply, within ``timeout``; see :meth:`MessageQueue._request`."""
        deadline = deadline_after(self.timeout)
        while True:
            conn = await self._wait_connection(deadline)
            # Numbering, registering and writing happen in one loop step, so
            # concurrent requests leave in the order of their numbers.
            number, data = build(conn.protocol)
            future: asyncio.Future[JSONObject] | None = None
            if reply:
                future = asyncio.get_running_loop().create_future()
                conn.pending.add(number, future)
            conn.writer.write(data)
            try:
                async with asyncio.timeout(remaining(deadline)):
                    await conn.writer.drain()
                    return None if future is None else await future
            except ServerError:
                raise  # PermissionDenied is an OSError too: keep it away from the clauses below
            except ConnectionClosed as exc:
                lost = exc
            except TimeoutError as exc:
                if isinstance(exc, CoreMQError):
                    raise
                conn.pending.discard(number)
                raise Timeout(f"no reply from {self.host}:{self.port} within {self.timeout} s") from None
            except OSError as exc:  # drain() on a lost connection
                lost = ConnectionClosed(f"connection lost while sending: {exc}")
            if not (retry and self.reconnect) or remaining(deadline) == 0:
                raise lost

    async def _result(self, future: asyncio.Future[JSONObject], deadline: float | None) -> JSONObject:
        try:
            async with asyncio.timeout(remaining(deadline)):
                return await future
        except TimeoutError as exc:
            if isinstance(exc, CoreMQError):
                raise
            raise Timeout(f"no reply from {self.host}:{self.port} within {self.timeout} s") from None

    async def subscribe(self, *queues: str) -> JSONObject:
        """Subscribe to ``queues`` (kept for reconnects); return the broker's reply."""
        names = [validate_queue_name(q) for q in queues]
        added = self._state.add_queues(names)
        self._resumer.forget(added)
        try:
            reply = await self._request(lambda p: p.subscribe(names))
        except ServerError:
            self._state.discard_queues(added)
            raise
        conn = self._conn
        if added and self.reconnect and conn is not None and conn.alive:
            # Learn where the new subscriptions stand, to resume from there (no wait).
            self._resync(conn, self._resumer.plan(added))
        return reply  # type: ignore[return-value]

    async def unsubscribe(self, *queues: str) -> JSONObject:
        """Unsubscribe from ``queues``; return the broker's reply."""
        names = [validate_queue_name(q) for q in queues]
        self._state.discard_queues(names)
        self._resumer.forget(names)
        return await self._request(lambda p: p.unsubscribe(names))  # type: ignore[return-value]

    async def set_options(self, **options: Any) -> JSONObject:
        """Set options (``None`` removes one; kept for reconnects); return the reply."""
        previous = self._state.update_options(options)
        try:
            return await self._request(lambda p: p.set_options(options))  # type: ignore[return-value]
        except ServerError:
            self._state.restore_options(previous)
            raise

    async def publish(self, queue: str, message: Any, *, reply: bool = True) -> JSONObject | None:
        """Publish ``message`` to ``queue``; see :meth:`MessageQueue.publish`."""
        validate_queue_name(queue)
        wrap(message)
        wait = reply and not self._state.replies_off
        return await self._request(lambda p: p.publish(queue, message), reply=wait, retry=False)

    async def send_message(self, queue: str, message: Any) -> JSONObject | None:
        """The 2015 name of :meth:`publish`."""
        return await self.publish(queue, message)

    async def history(self, *queues: str, since: Mapping[str, int] | int | None = None,
                      limit: int | None = None) -> JSONObject:
        """The raw history reply, with ``history`` and ``sequence``; see :meth:`MessageQueue.history`."""
        names = [validate_queue_name(q) for q in queues]
        after = since_map(names, since)
        return await self._request(lambda p: p.get_history(names, after, limit=limit))  # type: ignore[return-value]

    async def get_history(self, *queues: str, since: Mapping[str, int] | int | None = None) -> dict[str, list[Any]]:
        """``{queue: [message, ...]}``, oldest first, every page of it; see :meth:`MessageQueue.get_history`."""
        pages = HistoryPages([validate_queue_name(q) for q in queues], since)
        after = await self.history(*pages.queues, since=pages.since)
        while (since := pages.take(after)) is not None:
            after = await self.history(*since, since=since)
        return pages.messages

    async def status(self, **detail: bool) -> JSONObject:
        """The broker's description of itself; see :meth:`MessageQueue.status`."""
        return await self._request(lambda p: p.status(**detail))  # type: ignore[return-value]

    async def admin(self, action: str, **fields: Any) -> JSONObject:
        """An administrator's request; see :meth:`MessageQueue.admin`."""
        return await self._request(lambda p: p.admin(action, **fields), retry=False)  # type: ignore[return-value]

    # -- receiving -------------------------------------------------------------

    async def receive(self, timeout: float | None = None) -> Delivery | None:
        """The next delivery, or None after ``timeout`` seconds; ConnectionClosed once ended and drained.

        In order and once per queue, across reconnects too; ``gap`` marks the first one after lost messages.
        """
        try:
            async with asyncio.timeout(timeout):
                item = await self._deliveries.get()
        except TimeoutError:
            return None
        self._room.set()
        if item is _END:
            self._deliveries.put_nowait(_END)
            raise ConnectionClosed(str(self._ended))
        return item  # type: ignore[no-any-return]

    async def get_message(self, timeout: float | None = 1) -> tuple[str | None, Any]:
        """``(queue, message)`` of the next delivery, or ``(None, None)`` on timeout."""
        delivery = await self.receive(timeout)
        return (None, None) if delivery is None else (delivery.queue, delivery.message)

    async def __aiter__(self) -> AsyncIterator[tuple[str, Any]]:
        """``(queue, message)`` pairs until close() or BYE without reconnect; ConnectionClosed on a loss."""
        while True:
            try:
                delivery = await self.receive()
            except ConnectionClosed:
                if self._orderly:
                    return
                raise
            assert delivery is not None
            yield delivery.queue, delivery.message

    # -- closing ---------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Idempotent; see :meth:`MessageQueue.close`."""
        self._stop.set()
        self._room.set()
        conn, task = self._conn, self._reader_task
        if conn is not None and not conn.writer.is_closing():
            if conn.writer.can_write_eof():
                try:
                    conn.writer.write_eof()
                except OSError:
                    conn.writer.transport.abort()
            else:
                conn.writer.close()
        if task is not None and task is not asyncio.current_task() and not task.done():
            try:
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._end(ConnectionClosed("client is closed"), orderly=True)

    async def __aenter__(self) -> "AsyncMessageQueue":
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.connected else "disconnected"
        return f"<AsyncMessageQueue {self.host}:{self.port} {state} id={self.connection_id}>"
