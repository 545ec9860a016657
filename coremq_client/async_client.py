"""The asyncio CoreMQ client: :class:`AsyncMessageQueue`, the sync client's API as coroutines.

A thin I/O loop around :class:`~coremq_client.session.Session`, as
:mod:`coremq_client.sync_client` is: one reader task per client feeds bytes
to the connection's :class:`~coremq_client.session.Link`, acts on each batch
and reconnects with backoff. Writes need no lock: numbering a request and
handing its frame to the transport happen in one step of the event loop;
``drain()`` then applies asyncio's flow control. The reader writes the
resume's history requests itself, for the same reason.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator, Mapping

from ._common import JSONObject, deadline_after, logger, remaining
from ._state import ClientState
from .errors import AuthenticationFailed, ConnectionClosed, CoreMQError, ServerError, Timeout
from .protocol import Delivery
from .session import Batch, Done, Link, Operation, Probe, Request, advance
from . import store as store_operations
from .store import StoreItem
from .transports_ws import open_websocket_streams

__all__ = ["AsyncMessageQueue"]

_READ_SIZE = 2**16
_END = object()  # put on the delivery queue when no message can come any more


class _Connection:
    """One stream pair and the session's link over it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
        self.reader = reader
        self.writer = writer
        self.link = link
        link.closing = writer.is_closing  # an aborted transport takes no more requests

    @property
    def alive(self) -> bool:
        return self.link.alive


class AsyncMessageQueue(ClientState):
    """An asyncio CoreMQ client that reconnects by itself; see :class:`~coremq_client.MessageQueue`.

    Same constructor and semantics, ``servers=`` (several nodes, tried in
    turn), logging in, resuming without loss,
    ``max_pending`` and the repair of dropped messages included (the reader
    task stops reading while ``max_pending`` messages wait for
    :meth:`receive`); every request is a coroutine. ``on_error``, ``on_connect`` and
    ``on_gap`` may be plain functions or coroutine functions (then they run
    as tasks). Use from one event loop only.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._callbacks: set[asyncio.Future[Any]] = set()
        self._deliveries: asyncio.Queue[Any] = asyncio.Queue()
        self._room = asyncio.Event()  # set by receive(): the reader waits on it while max_pending messages wait
        self._connect_lock = asyncio.Lock()
        self._stop = asyncio.Event()  # set by close(); wakes backoff sleeps
        self._changed = asyncio.Event()  # set (and replaced) whenever _conn or the session's state changes
        self._reader_task: asyncio.Task[None] | None = None
        # The session's reporters hand back what a callback returned: run a coroutine as a task.
        self._session.reporter.on_result = self._session.gap_reporter.on_result = self._keep

    def set_credentials(self, *, token: str | None = None, username: str | None = None,
                        password: str | None = None) -> None:
        """Log in with these from the next connection on; see :meth:`MessageQueue.set_credentials`."""
        self._session.set_credentials(token, username, password)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- connecting ----------------------------------------------------------

    async def connect(self) -> None:
        """Connect, read the welcome and apply queues and options; see :meth:`MessageQueue.connect`."""
        deadline = deadline_after(self.connect_timeout)
        async with self._connect_lock:
            if self._session.ended is not None:
                raise ConnectionClosed(f"client is closed: {self._session.ended}")
            if self._reader_task is not None:
                await self._wait_connection(deadline)
                return
            conn = await self._establish_with_retries(deadline, first_delay=False, wait=True)
            if self._stop.is_set():
                conn.writer.close()
                raise ConnectionClosed("client is closed")
            self._reader_task = asyncio.create_task(self._run(conn), name=f"coremq-reader-{self.address}")
            self._connected(conn)
        for future in conn.link.replayed:
            await self._result(future, deadline)

    async def _sleep(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if close() was called meanwhile."""
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            return False
        return True

    async def _establish_with_retries(self, deadline: float | None, *, first_delay: bool, wait: bool) -> _Connection:
        delays = self._session.delays()
        if first_delay and await self._sleep(next(delays)):
            raise ConnectionClosed("client is closed")
        while True:
            try:
                return await self._establish(deadline, wait=wait)
            except CoreMQError as exc:
                if self._stop.is_set() and isinstance(exc, (ConnectionClosed, Timeout)):
                    raise
                delay = self._session.retry_delay(exc, delays, deadline, wait=wait)
            if await self._sleep(delay):
                raise ConnectionClosed("client is closed")

    async def _establish(self, deadline: float | None, *, wait: bool) -> _Connection:
        """One attempt: open the streams, then the handshake (welcome, login, replay and resume requests)."""
        limit = remaining(deadline) if deadline is not None else self.connect_timeout
        try:
            async with asyncio.timeout(limit):
                if self.url is not None:
                    reader, writer = await open_websocket_streams(self.url, tls=self.ssl)
                else:
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=self.ssl, server_hostname=self.host if self.ssl else None
                    )
        except (OSError, TimeoutError) as exc:
            raise ConnectionClosed(f"cannot connect to {self.address}: {exc!r}") from exc
        link = Link(self._session, wait=wait, future=asyncio.get_running_loop().create_future)
        try:
            while not link.ready:
                waiting = self.connect_timeout if link.welcome is None else self.timeout
                async with asyncio.timeout(remaining(deadline) if deadline is not None else waiting):
                    data = await reader.read(_READ_SIZE)
                if not data:
                    raise ConnectionClosed(f"{self.address} closed the connection while connecting")
                writer.write(link.handshake(data))
            async with asyncio.timeout(self.timeout):
                await writer.drain()
        except CoreMQError:
            writer.close()
            raise
        except TimeoutError as exc:
            writer.close()
            raise Timeout(f"{self.address} did not answer in time while connecting") from exc
        except OSError as exc:
            writer.close()
            raise ConnectionClosed(f"connection to {self.address} failed: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        return _Connection(reader, writer, link)

    async def _wait_connection(self, deadline: float | None) -> _Connection:
        """The live connection, waiting for a reconnect until ``deadline``."""
        while True:
            conn = self._conn
            if self._session.check_usable(conn and conn.link, started=self._reader_task is not None):
                return conn  # type: ignore[return-value]
            try:
                async with asyncio.timeout(remaining(deadline)):
                    await self._changed.wait()
            except TimeoutError:
                raise ConnectionClosed(f"not connected to {self.address} within {self.timeout} s") from None

    def _connected(self, conn: _Connection) -> None:
        """Make ``conn`` the current connection and hand its welcome to ``on_connect``."""
        self._conn = conn
        self._session.connected(conn.link)
        self._notify()
        self._keep(self._session.notify_connected(conn.link))

    # -- the reader task ---------------------------------------------------------

    async def _run(self, conn: _Connection) -> None:
        error, orderly = ConnectionClosed("client is closed"), True
        try:
            while True:
                error, orderly = await self._read(conn)
                self._lose(conn, error)
                if not self._session.reconnects_after(error, f"{self.address}", self._stop.is_set()):
                    break
                if (next_conn := await self._reconnect()) is None:
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
                conn = await self._establish_with_retries(None, first_delay=True, wait=False)
            except AuthenticationFailed as exc:
                if not await self._await_credentials(exc):
                    return None
                continue
            except (ConnectionClosed, Timeout):
                return None
            if self._stop.is_set():
                conn.writer.close()
                return None
            self._connected(conn)
            return conn

    async def _await_credentials(self, failure: AuthenticationFailed) -> bool:
        """Report refused credentials and wait for set_credentials(); False if closed meanwhile."""
        logger.error("%s refused the credentials; waiting for new ones", self.address)
        self._session.reporter.report(failure)
        self._session.auth_failure = failure
        self._notify()  # waiting requests raise it
        while self._session.auth_failure is failure and not self._stop.is_set():
            await self._changed.wait()
        return not self._stop.is_set()

    async def _read(self, conn: _Connection) -> tuple[ConnectionClosed, bool]:
        """Read and act until the connection ends: ``(why, orderly)``."""
        batch = conn.link.first_batch()
        while batch.ended is None:
            self._act(batch, conn)
            await self._wait_for_room()
            try:
                data: bytes | OSError = await conn.reader.read(_READ_SIZE)
            except OSError as exc:
                data = exc
            batch = conn.link.receive_data(data)
        self._act(batch, conn)
        return batch.ended, batch.orderly

    def _act(self, batch: Batch, conn: _Connection) -> None:
        self._session.act(batch, conn.link, self._deliveries.put_nowait,
                          lambda since: conn.writer.write(conn.link.resync(since)))

    async def _wait_for_room(self) -> None:
        """While ``max_pending`` messages wait for receive(), do not read (TCP pushes back on the broker)."""
        limit = self.max_pending
        while limit is not None and self._deliveries.qsize() >= limit and not self._stop.is_set():
            self._room.clear()
            await self._room.wait()

    def _keep(self, result: Any) -> None:
        """Run what a callback returned, if it is awaitable, as a task kept until it ends."""
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callbacks.add(task)
            task.add_done_callback(self._callbacks.discard)

    def _lose(self, conn: _Connection, error: ConnectionClosed) -> None:
        conn.link.lose(error)
        conn.writer.close()
        if self._conn is conn:
            self._conn = None
        self._notify()

    def _end(self, error: ConnectionClosed, *, orderly: bool) -> None:
        if self._session.end(error, orderly=orderly):
            self._notify()
            self._deliveries.put_nowait(_END)

    # -- requests --------------------------------------------------------------

    async def _perform(self, operation: Operation[Any] | Request) -> Any:
        """Carry out a public method's request or operation (see :mod:`coremq_client.session`)."""
        if isinstance(operation, Request):  # the common case, publish included: one request, its reply
            return await self._request(operation)
        result, error = None, None
        while not isinstance(step := advance(operation, result, error), Done):
            result, error = None, None
            try:
                result = self._probe(step.queues) if isinstance(step, Probe) else await self._request(step)
            except Exception as exc:
                error = exc
        return step.value

    async def _request(self, request: Request) -> JSONObject | None:
        """Send one frame and wait for its reply, within ``timeout``; see :class:`~coremq_client.session.Request`."""
        deadline = deadline_after(self.timeout)
        while True:
            conn = await self._wait_connection(deadline)
            # Numbering, registering and writing happen in one loop step, so
            # concurrent requests leave in the order of their numbers.
            number, data = request.build(conn.link.protocol)
            future: asyncio.Future[JSONObject] | None = None
            if request.reply:
                future = asyncio.get_running_loop().create_future()
                conn.link.pending.add(number, future)
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
                conn.link.pending.discard(number)
                raise Timeout(f"no reply from {self.address} within {self.timeout} s") from None
            except OSError as exc:  # drain() on a lost connection
                lost = ConnectionClosed(f"connection lost while sending: {exc}")
            if not self._session.may_retry(request, deadline):
                raise lost

    def _probe(self, queues: list[str]) -> None:
        """Ask where new subscriptions stand on the live connection, if any (no wait for a reconnect)."""
        conn = self._conn
        if conn is not None and conn.alive:
            conn.writer.write(conn.link.resync(self._session.resumer.plan(queues)))

    async def _result(self, future: asyncio.Future[JSONObject], deadline: float | None) -> JSONObject:
        try:
            async with asyncio.timeout(remaining(deadline)):
                return await future
        except TimeoutError as exc:
            if isinstance(exc, CoreMQError):
                raise
            raise Timeout(f"no reply from {self.address} within {self.timeout} s") from None

    async def subscribe(self, *queues: str) -> JSONObject:
        """Subscribe to ``queues`` (kept for reconnects); return the broker's reply."""
        return await self._perform(self._session.subscribe(queues))

    async def unsubscribe(self, *queues: str) -> JSONObject:
        """Unsubscribe from ``queues``; return the broker's reply."""
        return await self._perform(self._session.unsubscribe(queues))

    async def set_options(self, **options: Any) -> JSONObject:
        """Set options (``None`` removes one; kept for reconnects); return the reply."""
        return await self._perform(self._session.set_options(options))

    async def publish(self, queue: str, message: Any, *, reply: bool = True) -> JSONObject | None:
        """Publish ``message`` to ``queue``; see :meth:`MessageQueue.publish`."""
        return await self._perform(self._session.publish(queue, message, reply))

    async def send_message(self, queue: str, message: Any) -> JSONObject | None:
        """The 2015 name of :meth:`publish`."""
        return await self.publish(queue, message)

    async def history(self, *queues: str, since: Mapping[str, int] | int | None = None,
                      limit: int | None = None) -> JSONObject:
        """The raw history reply, with ``history`` and ``sequence``; see :meth:`MessageQueue.history`."""
        return await self._perform(self._session.history(queues, since, limit))

    async def get_history(self, *queues: str, since: Mapping[str, int] | int | None = None) -> dict[str, list[Any]]:
        """``{queue: [message, ...]}``, oldest first, every page of it; see :meth:`MessageQueue.get_history`."""
        return await self._perform(self._session.get_history(queues, since))

    async def status(self, **detail: bool) -> JSONObject:
        """The broker's description of itself; see :meth:`MessageQueue.status`."""
        return await self._perform(self._session.status(detail))

    async def admin(self, action: str, **fields: Any) -> JSONObject:
        """An administrator's request; see :meth:`MessageQueue.admin`."""
        return await self._perform(self._session.admin(action, fields))

    # -- the store (docs/store.md) ----------------------------------------------

    async def store_get(self, key: str) -> StoreItem | None:
        """A key of the broker's store, or None; see :meth:`MessageQueue.store_get`."""
        return await self._perform(store_operations.get(key))

    async def store_set(self, key: str, value: str | bytes, *, ttl: int = 0, flags: int = 0, mode: str = "set",
                        cas: int | None = None) -> int:
        """Write a key of the store; its new cas. See :meth:`MessageQueue.store_set`."""
        return await self._perform(store_operations.set(key, value, flags=flags, ttl=ttl, mode=mode, cas=cas))

    async def store_delete(self, key: str) -> bool:
        """Delete a key of the store; whether it was there."""
        return await self._perform(store_operations.delete(key))

    async def store_incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` to a key's number; the new number. See :meth:`MessageQueue.store_incr`."""
        return await self._perform(store_operations.incr(key, delta))

    async def store_touch(self, key: str, ttl: int) -> bool:
        """Give a key a new ``ttl``; whether it was there."""
        return await self._perform(store_operations.touch(key, ttl))

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
            raise ConnectionClosed(str(self._session.ended))
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
                if self._session.orderly:
                    return
                raise
            assert delivery is not None
            yield delivery.queue, delivery.message

    # -- closing ---------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Idempotent; see :meth:`MessageQueue.close`."""
        self._stop.set()
        self._room.set()
        self._notify()  # a reader waiting for credentials
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
