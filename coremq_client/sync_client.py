"""The blocking CoreMQ client: :class:`MessageQueue`, the 2015 API on a reader thread.

A thin I/O loop around :class:`~coremq_client.session.Session`, which decides
everything that does not wait. One background thread per client owns
reading: it feeds bytes to the connection's :class:`~coremq_client.session.Link`,
acts on each batch (deliveries on a :class:`queue.Queue`, replies to their
futures) and, when the connection drops, reconnects with backoff. Any number
of threads may call the methods at once: frames are numbered and written
under one lock, which the reader never takes, so a writer stuck on a full
socket cannot stop replies from being read. The history requests that the
resume asks for while reading are written by one more thread per client,
fed by the reader.
"""

from __future__ import annotations

import queue as queue_module
import socket
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator, Mapping

from ._common import JSONObject, deadline_after, logger, remaining
from ._state import ClientState
from .errors import AuthenticationFailed, ConnectionClosed, CoreMQError, Timeout
from .protocol import ClientProtocol, Delivery
from .session import Batch, Done, Link, Operation, Probe, Request, advance
from . import store as store_operations
from .store import StoreItem
from .transports import Stream, open_stream
from .transports_ws import WebSocketStream, open_websocket

__all__ = ["MessageQueue"]

_READ_SIZE = 2**16
_Build = Callable[[ClientProtocol], tuple[int, bytes]]
_END = object()  # put on the delivery queue when no message can come any more


class _NotSent(ConnectionClosed):
    """The connection was gone before any byte of the request left: safe to send again."""


class _Connection:
    """One socket and the session's link over it."""

    def __init__(self, sock: Stream | WebSocketStream, link: Link) -> None:
        self.sock = sock
        self.link = link

    @property
    def alive(self) -> bool:
        return self.link.alive

    def abort(self) -> None:
        """Make the reader's ``recv`` return at once. Safe to repeat, from any thread."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class MessageQueue(ClientState):
    """A blocking, thread-safe CoreMQ client that reconnects by itself.

    ``queues`` and ``options`` (and whatever :meth:`subscribe` and
    :meth:`set_options` add later) are re-applied on every (re)connect.
    ``timeout`` bounds every request, ``connect_timeout`` every connection
    attempt. With ``reconnect`` a lost connection is reopened after
    ``backoff`` seconds, doubling up to ``max_backoff``, with jitter; requests
    wait for it within their timeout. ``on_error(error)`` receives errors that
    no caller waits for (for example the ``ERROR:`` answer to a publish sent
    without waiting), from the reader thread; they are also logged and kept in
    :attr:`errors`.
    ``on_connect(welcome)`` is called after every connection and reconnection,
    once the subscriptions and options have been sent again (from the reader
    thread after a reconnect; it must not block): the connection id changes
    with every connection.

    **Several servers.** ``servers=[(host, port), ...]`` (instead of ``host``
    and ``port``; or a list of ``ws://`` URLs) names equivalent nodes of one
    broker, e.g. ``run_coremq --redis`` nodes sharing one Redis. The client
    connects to the first; after each failed attempt and each lost
    connection it tries the next one (the first after the last), with the
    same backoff, and resumes there as after any reconnect. :attr:`address`
    is the current one.

    **Logging in.** With ``token``, or ``username`` and ``password``, every
    connection logs in (``coremq_auth``) after the welcome and before the
    subscriptions are replayed; :attr:`user` is the name the broker confirmed.
    Refused credentials raise :class:`AuthenticationFailed` from
    :meth:`connect`. After a reconnect they are not tried again: the client
    reports the error to ``on_error``, requests raise it, and it waits until
    :meth:`set_credentials` gives new ones.

    **Resuming without loss** (``resume=True``, the default). After every
    reconnect, before any new message is delivered, the client fetches from
    each subscribed queue's history what it missed since the last ``coremq_id``
    it delivered, and delivers it in order and exactly once (duplicates, by id,
    are dropped). Messages that can no longer be delivered, because they left
    the history before the client came back or because a broker restart
    renumbered a queue that is not durable, are reported as a :class:`Gap`:
    to ``on_gap(gap)`` (from the reader thread; it must not block), in
    :attr:`gaps`, in the log, and as ``Delivery.gap`` on the next message of
    that queue returned by :meth:`receive`. A queue subscribed to but with
    nothing delivered yet resumes from where it stood when subscribed.
    The connection's own id queue is not resumed. With ``resume=False``
    messages published while disconnected are simply not delivered (as in
    2015); :attr:`last_ids` is kept either way.

    **A slow application.** At most ``max_pending`` messages (default
    :data:`~coremq_client._common.MAX_PENDING`, 10,000; None: no bound) wait
    for :meth:`receive`; then the reader thread stops reading the socket
    until the application takes some (it may hold one more read beyond:
    64 KiB of messages, or one history reply: ``RESUME_PAGE`` messages per
    queue). TCP then pushes back on the broker, which treats the client as
    any slow reader: it holds the publishers, and if the client still does
    not drain, the queue's slow-consumer policy decides: ``disconnect`` cuts
    the connection (the client reconnects and resumes from history),
    ``drop`` drops messages and says which (:class:`SlowConsumer` to
    ``on_error``); the client fetches those from history as after a
    reconnect, and reports as a :class:`Gap` only what history no longer
    holds (with ``resume=False``: all of them). While a queue is fetched,
    at most ``max_pending`` live messages are held for it (the later ones
    come with the history). Replies
    wait behind the messages too: do not wait for a reply in the only thread
    that calls :meth:`receive` while ``max_pending`` messages are waiting.
    :attr:`pending` tells how many wait.

    Always :meth:`close` the client (or use ``with``): its reader thread keeps
    it alive otherwise.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deliveries: queue_module.Queue[Any] = queue_module.Queue()
        self._room = threading.Condition()  # the reader waits on it while max_pending messages wait
        self._reader_waits = False
        self._write_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._stop = threading.Event()  # set by close(); wakes backoff sleeps
        self._cond = threading.Condition()  # guards _conn, _reader and the session's connection fields
        self._reader: threading.Thread | None = None
        self._asks: queue_module.SimpleQueue[tuple[_Connection, dict[str, int]] | None] = queue_module.SimpleQueue()
        self._asker: threading.Thread | None = None

    def set_credentials(self, *, token: str | None = None, username: str | None = None,
                        password: str | None = None) -> None:
        """Log in with these credentials from the next connection on (none: anonymously).

        A client waiting after refused credentials reconnects with them. The
        live connection, if any, stays logged in as it is.
        """
        with self._cond:
            self._session.set_credentials(token, username, password)
            self._cond.notify_all()

    # -- connecting ----------------------------------------------------------

    def connect(self) -> None:
        """Connect, read the welcome and apply the queues and options; no-op when connected.

        Returns once the broker confirmed the subscriptions and options, so a
        message published after this returns reaches this client. Raises
        :class:`ConnectionClosed` if no connection could be made within
        ``connect_timeout`` (retrying with backoff when ``reconnect`` is on),
        :class:`Timeout` if the broker accepted but sent no welcome,
        :class:`AuthenticationFailed` if it refused the credentials, and
        :class:`ServerError` if it refused a queue or an option.
        """
        deadline = deadline_after(self.connect_timeout)
        with self._connect_lock:
            if self._session.ended is not None:
                raise ConnectionClosed(f"client is closed: {self._session.ended}")
            if self._reader is not None:
                self._wait_connection(deadline)
                return
            conn = self._establish_with_retries(deadline, first_delay=False, wait=True)
            with self._cond:
                if self._stop.is_set():
                    conn.sock.close()
                    raise ConnectionClosed("client is closed")
                self._conn = conn
                self._session.connected(conn.link)
                self._reader = threading.Thread(
                    target=self._run, args=(conn,), name=f"coremq-reader-{self.address}", daemon=True
                )
                self._reader.start()
            self._session.notify_connected(conn.link)  # outside the lock: on_connect may use the client
        for future in conn.link.replayed:
            self._result(future, deadline)

    def _establish_with_retries(self, deadline: float | None, *, first_delay: bool, wait: bool) -> _Connection:
        delays = self._session.delays()
        if first_delay and self._stop.wait(next(delays)):
            raise ConnectionClosed("client is closed")
        while True:
            try:
                return self._establish(deadline, wait=wait)
            except CoreMQError as exc:
                if self._stop.is_set() and isinstance(exc, (ConnectionClosed, Timeout)):
                    raise
                delay = self._session.retry_delay(exc, delays, deadline, wait=wait)
            if self._stop.wait(delay):
                raise ConnectionClosed("client is closed")

    def _establish(self, deadline: float | None, *, wait: bool) -> _Connection:
        """One attempt: open the socket, then the handshake (welcome, login, replay and resume requests)."""
        limit = remaining(deadline) if deadline is not None else self.connect_timeout
        try:
            if self.url is not None:
                sock: Stream | WebSocketStream = open_websocket(self.url, timeout=limit, tls=self.ssl)
            else:
                sock = open_stream(self.host, self.port, timeout=limit, tls=self.ssl)
        except OSError as exc:
            raise ConnectionClosed(f"cannot connect to {self.address}: {exc}") from exc
        link = Link(self._session, wait=wait, future=Future)
        try:
            while not link.ready:
                waiting = self.connect_timeout if link.welcome is None else self.timeout
                sock.settimeout(remaining(deadline) if deadline is not None else waiting)
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise ConnectionClosed(f"{self.address} closed the connection while connecting")
                sock.sendall(link.handshake(data))
            sock.settimeout(self.timeout)
        except CoreMQError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise Timeout(f"{self.address} did not answer in time while connecting") from exc
            raise ConnectionClosed(f"connection to {self.address} failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return _Connection(sock, link)

    def _wait_connection(self, deadline: float | None) -> _Connection:
        """The live connection, waiting for a reconnect until ``deadline``."""
        with self._cond:
            while True:
                conn = self._conn
                if self._session.check_usable(conn and conn.link, started=self._reader is not None):
                    return conn  # type: ignore[return-value]
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise ConnectionClosed(f"not connected to {self.address} within {self.timeout} s")
                self._cond.wait(left)

    # -- the reader thread -----------------------------------------------------

    def _run(self, conn: _Connection) -> None:
        error, orderly = ConnectionClosed("client is closed"), True
        try:
            while True:
                error, orderly = self._read(conn)
                self._lose(conn, error)
                if not self._session.reconnects_after(error, f"{self.address}", self._stop.is_set()):
                    break
                if (next_conn := self._reconnect()) is None:
                    break  # only when closing
                conn = next_conn
        except BaseException as exc:  # pragma: no cover - a bug; never leave callers hanging
            logger.exception("CoreMQ reader thread failed")
            error, orderly = ConnectionClosed(f"reader failed: {exc!r}"), False
        self._end(error, orderly=orderly or self._stop.is_set())

    def _reconnect(self) -> _Connection | None:
        """Connect again (with backoff), waiting for new credentials if these are refused; None once closed."""
        while True:
            try:
                conn = self._establish_with_retries(None, first_delay=True, wait=False)
            except AuthenticationFailed as exc:
                if not self._await_credentials(exc):
                    return None
                continue
            except (ConnectionClosed, Timeout):
                return None
            with self._cond:
                if self._stop.is_set():
                    conn.sock.close()
                    return None
                self._conn = conn
                self._session.connected(conn.link)
                self._cond.notify_all()
            self._session.notify_connected(conn.link)
            return conn

    def _await_credentials(self, failure: AuthenticationFailed) -> bool:
        """Report refused credentials and wait for set_credentials(); False if closed meanwhile."""
        logger.error("%s refused the credentials; waiting for new ones", self.address)
        self._session.reporter.report(failure)
        with self._cond:
            self._session.auth_failure = failure
            self._cond.notify_all()  # waiting requests raise it
            while self._session.auth_failure is failure and not self._stop.is_set():
                self._cond.wait()
        return not self._stop.is_set()

    def _read(self, conn: _Connection) -> tuple[ConnectionClosed, bool]:
        """Read and act until the connection ends: ``(why, orderly)``."""
        batch = conn.link.first_batch()
        while batch.ended is None:
            self._act(batch, conn)
            self._wait_for_room()
            batch = conn.link.receive_data(self._recv(conn))
        self._act(batch, conn)
        return batch.ended, batch.orderly

    @staticmethod
    def _recv(conn: _Connection) -> bytes | OSError:
        while True:
            try:
                return conn.sock.recv(_READ_SIZE)
            except TimeoutError:
                continue  # the socket timeout bounds writes; reads just go on
            except OSError as exc:
                return exc

    def _act(self, batch: Batch, conn: _Connection) -> None:
        self._session.act(batch, conn.link, self._deliveries.put, lambda since: self._ask(conn, since))

    def _wait_for_room(self) -> None:
        """While ``max_pending`` messages wait for receive(), do not read (TCP pushes back on the broker)."""
        limit = self.max_pending
        if limit is None or self._deliveries.qsize() < limit:
            return
        with self._room:
            self._reader_waits = True  # before looking: receive() then cannot miss waking us
            while self._deliveries.qsize() >= limit and not self._stop.is_set():
                self._room.wait()
            self._reader_waits = False

    def _ask(self, conn: _Connection, since: dict[str, int]) -> None:
        """Have the asker thread send a history request of the resume: the reader never waits for the write lock."""
        if self._asker is None:
            self._asker = threading.Thread(target=self._run_asker, name=f"coremq-resync-{self.address}",
                                           daemon=True)
            self._asker.start()
        self._asks.put((conn, since))

    def _run_asker(self) -> None:
        while (ask := self._asks.get()) is not None:
            conn, since = ask
            try:
                # No deadline: the lock comes free at the latest when the connection is lost.
                self._send(conn, lambda p: (0, conn.link.resync(since)), None, None)
            except CoreMQError:
                pass  # the next connection asks again

    def _lose(self, conn: _Connection, error: ConnectionClosed) -> None:
        conn.link.lose(error)
        conn.abort()  # wakes a writer blocked in sendall, so the lock comes free
        with self._write_lock:
            conn.sock.close()
        with self._cond:
            if self._conn is conn:
                self._conn = None
            self._cond.notify_all()

    def _end(self, error: ConnectionClosed, *, orderly: bool) -> None:
        with self._cond:
            ended = self._session.end(error, orderly=orderly)
            self._cond.notify_all()
        if ended:
            self._deliveries.put(_END)
            self._asks.put(None)

    # -- requests --------------------------------------------------------------

    def _perform(self, operation: Operation[Any] | Request) -> Any:
        """Carry out a public method's request or operation (see :mod:`coremq_client.session`)."""
        if isinstance(operation, Request):  # the common case, publish included: one request, its reply
            return self._request(operation)
        result, error = None, None
        while not isinstance(step := advance(operation, result, error), Done):
            result, error = None, None
            try:
                result = self._probe(step.queues) if isinstance(step, Probe) else self._request(step)
            except Exception as exc:
                error = exc
        return step.value

    def _request(self, request: Request) -> JSONObject | None:
        """Send one frame and wait for its reply, within ``timeout``; see :class:`~coremq_client.session.Request`."""
        deadline = deadline_after(self.timeout)
        while True:
            conn = self._wait_connection(deadline)
            future: Future[JSONObject] | None = Future() if request.reply else None
            try:
                number = self._send(conn, request.build, future, deadline)
            except _NotSent:
                continue  # _wait_connection waits for the next connection or raises
            except ConnectionClosed:
                if not self._session.may_retry(request, deadline):
                    raise
                continue
            if future is None:
                return None
            try:
                return self._result(future, deadline)
            except Timeout:
                conn.link.pending.discard(number)
                raise
            except ConnectionClosed:
                if not self._session.may_retry(request, deadline):
                    raise

    def _send(self, conn: _Connection, build: _Build, future: Future[JSONObject] | None, deadline: float | None) -> int:
        left = remaining(deadline)
        if not self._write_lock.acquire(timeout=-1 if left is None else left):
            raise Timeout(f"could not send within {self.timeout} s: other threads hold the connection")
        try:
            if not conn.alive:
                raise _NotSent("connection lost")
            number, data = build(conn.link.protocol)
            if future is not None:
                try:
                    conn.link.pending.add(number, future)
                except ConnectionClosed as exc:
                    raise _NotSent(str(exc)) from None
            try:
                conn.sock.sendall(data)
            except OSError as exc:
                # Part of the frame may be out: the stream is unusable now.
                lost = ConnectionClosed(f"connection lost while sending: {exc}")
                conn.link.lose(lost)
                conn.abort()
                if isinstance(exc, TimeoutError):
                    raise Timeout(f"sending took longer than {self.timeout} s; connection dropped") from exc
                raise lost from exc
            return number
        finally:
            self._write_lock.release()

    def _probe(self, queues: list[str]) -> None:
        """Ask where new subscriptions stand on the live connection, if any (no wait for a reconnect)."""
        conn = self._conn
        if conn is None:
            return
        try:
            self._send(conn, lambda p: (0, conn.link.resync(self._session.resumer.plan(queues))), None,
                       deadline_after(self.timeout))
        except CoreMQError:
            pass  # a reconnect probes every subscribed queue anyway

    def _result(self, future: Future[JSONObject], deadline: float | None) -> JSONObject:
        try:
            return future.result(timeout=remaining(deadline))
        except TimeoutError as exc:
            if isinstance(exc, CoreMQError):
                raise
            raise Timeout(f"no reply from {self.address} within {self.timeout} s") from None

    def subscribe(self, *queues: str) -> JSONObject:
        """Subscribe to ``queues`` (kept for reconnects); return the broker's reply."""
        return self._perform(self._session.subscribe(queues))

    def unsubscribe(self, *queues: str) -> JSONObject:
        """Unsubscribe from ``queues``; return the broker's reply."""
        return self._perform(self._session.unsubscribe(queues))

    def set_options(self, **options: Any) -> JSONObject:
        """Set options (``None`` removes one; kept for reconnects); return the reply with ``options``."""
        return self._perform(self._session.set_options(options))

    def publish(self, queue: str, message: Any, *, reply: bool = True) -> JSONObject | None:
        """Publish ``message`` (a dict, list or str) to ``queue``.

        Returns the broker's reply (``{"response": "OK: Message sent", "id": n, ...}``)
        or raises its ``ERROR:`` as :class:`ServerError`. With ``reply=False``,
        or while option ``reply`` is false, returns None once the frame is
        sent; an error the broker still reports goes to ``on_error``.
        A publish is never sent twice: if the connection drops before the
        reply, :class:`ConnectionClosed` is raised.
        """
        return self._perform(self._session.publish(queue, message, reply))

    def send_message(self, queue: str, message: Any) -> JSONObject | None:
        """The 2015 name of :meth:`publish`."""
        return self.publish(queue, message)

    def history(self, *queues: str, since: Mapping[str, int] | int | None = None,
                limit: int | None = None) -> JSONObject:
        """The raw history reply: ``history`` (stored messages) and ``sequence`` (first/last id per queue).

        With ``since`` (one id, or one per queue) only newer messages come; with
        ``limit`` at most that many per queue, the reply's ``more`` naming the
        queues cut short (the broker also cuts a reply at its frame size).
        """
        return self._perform(self._session.history(queues, since, limit))

    def get_history(self, *queues: str, since: Mapping[str, int] | int | None = None) -> dict[str, list[Any]]:
        """``{queue: [message, ...]}``, oldest first, each message as the publisher sent it.

        Follows the broker's pages (``more``): the whole history kept, however
        large. :meth:`history` is one raw page.
        """
        return self._perform(self._session.get_history(queues, since))

    def status(self, **detail: bool) -> JSONObject:
        """The broker's description of itself (connections, queues, counters).

        ``connections=True``, ``queues=True``, ``series=True`` add the list of
        connections, of public queues, and the per-second rates of the last minute.
        """
        return self._perform(self._session.status(detail))

    def admin(self, action: str, **fields: Any) -> JSONObject:
        """An administrator's request (``"disconnect"`` with ``connection=``, ``"purge"`` with ``queue=``).

        The broker's access policy decides who may; a refusal raises :class:`PermissionDenied`.
        Never re-sent after a lost connection.
        """
        return self._perform(self._session.admin(action, fields))

    # -- the store (docs/store.md) ----------------------------------------------

    def store_get(self, key: str) -> StoreItem | None:
        """The value of ``key`` in the broker's store (docs/store.md), or None when there is none.

        A :class:`~coremq_client.store.StoreItem`: ``value`` (bytes), ``text``, ``flags``, ``cas``, ``expires``.
        The permission rules of the queue ``coremq.store.<key>`` decide (``subscribe``).
        """
        return self._perform(store_operations.get(key))

    def store_set(self, key: str, value: str | bytes, *, ttl: int = 0, flags: int = 0, mode: str = "set",
                  cas: int | None = None) -> int:
        """Write ``key`` in the store; return its new ``cas``.

        ``ttl``: memcached's exptime (0 never expires; seconds up to 30 days; above, a UNIX time).
        ``mode``: ``set``, ``add`` (only a new key), ``replace``, ``append``, ``prepend``; ``cas``:
        only if the key's cas is still that (else :class:`ServerError` ``store_cas_mismatch``).
        """
        return self._perform(store_operations.set(key, value, flags=flags, ttl=ttl, mode=mode, cas=cas))

    def store_delete(self, key: str) -> bool:
        """Delete ``key`` from the store; whether it was there."""
        return self._perform(store_operations.delete(key))

    def store_incr(self, key: str, delta: int = 1) -> int:
        """Add ``delta`` (negative: subtract, stopping at 0) to the number ``key`` holds; the new number.

        A missing key raises :class:`ServerError` ``store_not_found``; a value that is no number, ``store_not_numeric``.
        """
        return self._perform(store_operations.incr(key, delta))

    def store_touch(self, key: str, ttl: int) -> bool:
        """Give ``key`` a new ``ttl`` (as :meth:`store_set`); whether it was there."""
        return self._perform(store_operations.touch(key, ttl))

    # -- receiving -------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Delivery | None:
        """The next delivered message, or None after ``timeout`` seconds (None: wait forever).

        Per queue, messages come in ``coremq_id`` order and once each, across
        reconnects too (with ``resume``); the first one after lost messages
        has ``gap`` set. Raises :class:`ConnectionClosed` once the client has
        ended and every message received before has been returned.
        """
        try:
            item = self._deliveries.get(timeout=timeout)
        except queue_module.Empty:
            return None
        if self._reader_waits:
            with self._room:
                self._room.notify()
        if item is _END:
            self._deliveries.put(_END)  # wake the next waiter too
            raise ConnectionClosed(str(self._session.ended))
        return item  # type: ignore[no-any-return]

    def get_message(self, timeout: float | None = 1) -> tuple[str | None, Any]:
        """``(queue, message)`` of the next delivery, or ``(None, None)`` on timeout (2015 API)."""
        delivery = self.receive(timeout)
        return (None, None) if delivery is None else (delivery.queue, delivery.message)

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        """``(queue, message)`` pairs until close() or BYE without reconnect; ConnectionClosed on a loss."""
        while True:
            try:
                delivery = self.receive()
            except ConnectionClosed:
                if self._session.orderly:
                    return
                raise
            assert delivery is not None
            yield delivery.queue, delivery.message

    # -- closing ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connection and stop reconnecting. Idempotent.

        Half-closes first so the broker answers what it already received
        (late errors still reach ``on_error``), then waits up to ``timeout``.
        """
        with self._cond:
            self._stop.set()
            self._cond.notify_all()  # a reader waiting for credentials
            conn, reader = self._conn, self._reader
        with self._room:
            self._room.notify_all()  # a reader waiting for the application to receive
        if conn is not None:
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                conn.abort()
        if reader is not None and reader is not threading.current_thread():
            reader.join(self.timeout)
            if reader.is_alive() and conn is not None:
                conn.abort()
                reader.join(1.0)
        self._end(ConnectionClosed("client is closed"), orderly=True)

    def __enter__(self) -> "MessageQueue":
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
