"""The blocking CoreMQ client: :class:`MessageQueue`, the 2015 API on a reader thread.

One background thread per client owns reading: it feeds bytes to
:class:`~coremq_client.protocol.ClientProtocol`, completes the future of each
request by its reply number, puts deliveries on a :class:`queue.Queue` and, when
the connection drops, reconnects with backoff, logs in again, replays the
subscriptions and options and fetches what it missed (see
:mod:`coremq_client.resume`). Any number of threads may call the methods at once: frames are
numbered and written under one lock, which the reader never takes, so a writer
stuck on a full socket cannot stop replies from being read.
"""

from __future__ import annotations

import queue as queue_module
import socket
import ssl as ssl_module
import threading
from concurrent.futures import Future
from typing import Any, Callable, Iterator, Mapping

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
from .codec import DEFAULT_MAX_FRAME_SIZE, DEFAULT_PORT, JSONCodec, validate_queue_name
from .codec import Decoder, Encoder
from .errors import AuthenticationFailed, ConnectionClosed, CoreMQError, ServerError, Timeout
from .protocol import ClientProtocol, Delivery, Gap, Welcome, wrap
from ._state import ClientState
from .resume import RESUME_PAGE, Item, Resumer
from .transports import Stream, open_stream

__all__ = ["MessageQueue"]

_READ_SIZE = 2**16
_Build = Callable[[ClientProtocol], tuple[int, bytes]]
_END = object()  # put on the delivery queue when no message can come any more


class _NotSent(ConnectionClosed):
    """The connection was gone before any byte of the request left: safe to send again."""


class _Connection:
    """One socket with its protocol state, its pending replies and events read with the welcome."""

    def __init__(self, sock: Stream, protocol: ClientProtocol, welcome: Welcome, backlog: list[Any]) -> None:
        self.sock = sock
        self.protocol = protocol
        self.welcome = welcome
        self.backlog = backlog
        self.pending: PendingReplies[Future[JSONObject]] = PendingReplies()
        self.resyncs: dict[int, dict[str, int]] = {}  # history requests of the resume, by number

    @property
    def alive(self) -> bool:
        return self.pending.closed is None

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
        self._deliveries: queue_module.Queue[Any] = queue_module.Queue()
        self._room = threading.Condition()  # the reader waits on it while max_pending messages wait
        self._reader_waits = False
        self._write_lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._stop = threading.Event()  # set by close(); wakes backoff sleeps
        self._cond = threading.Condition()  # guards the four fields below
        self._conn: _Connection | None = None
        self._reader: threading.Thread | None = None
        self._ended: ConnectionClosed | None = None  # no connection will ever come again
        self._orderly = False
        self._welcome: Welcome | None = None
        self._user: str | None = None
        self._auth_failure: AuthenticationFailed | None = None  # set while waiting for new credentials

    # -- state: the read-only properties are ClientState's ----------------------

    def set_credentials(self, *, token: str | None = None, username: str | None = None,
                        password: str | None = None) -> None:
        """Log in with these credentials from the next connection on (none: anonymously).

        A client waiting after refused credentials reconnects with them. The
        live connection, if any, stays logged in as it is.
        """
        credentials = credentials_from(token, username, password)
        with self._cond:
            self._credentials = credentials
            self._auth_failure = None
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
            if self._ended is not None:
                raise ConnectionClosed(f"client is closed: {self._ended}")
            if self._reader is not None:
                self._wait_connection(deadline)
                return
            conn, replayed = self._establish_with_retries(deadline, first_delay=False, wait=True)
            with self._cond:
                if self._stop.is_set():
                    conn.sock.close()
                    raise ConnectionClosed("client is closed")
                self._conn = conn
                self._reader = threading.Thread(
                    target=self._run, args=(conn,), name=f"coremq-reader-{self.host}:{self.port}", daemon=True
                )
                self._reader.start()
                self._cond.notify_all()
            self._connected(conn)
        for future in replayed:
            self._result(future, deadline)

    def _establish_with_retries(
        self, deadline: float | None, *, first_delay: bool, wait: bool
    ) -> tuple[_Connection, list[Future[JSONObject]]]:
        delays = backoff_delays(self.backoff, self.max_backoff)
        if first_delay and self._stop.wait(next(delays)):
            raise ConnectionClosed("client is closed")
        while True:
            try:
                return self._establish(deadline, wait=wait)
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
                self._reporter.report(exc)  # say, too many connections for this user: try again later
                delay = next(delays)
            if self._stop.wait(delay):
                raise ConnectionClosed("client is closed")

    def _establish(self, deadline: float | None, *, wait: bool) -> tuple[_Connection, list[Future[JSONObject]]]:
        """One attempt: open the socket, read the welcome, log in, send the replay and resume requests.

        With ``wait`` the replay requests get futures (for connect() to wait
        on); without, their errors reach the error reporter.
        """
        limit = remaining(deadline) if deadline is not None else self.connect_timeout
        try:
            sock = open_stream(self.host, self.port, timeout=limit, tls=self.ssl)
        except OSError as exc:
            raise ConnectionClosed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        try:
            protocol = ClientProtocol(codec=self.codec, max_frame_size=self.max_frame_size)
            welcome, backlog = self._read_welcome(sock, protocol, deadline)
            self._resumer.connected(welcome.connection_id)
            credentials = self._credentials
            user = self._log_in(sock, protocol, credentials, backlog, deadline) if credentials else None
            conn = _Connection(sock, protocol, welcome, backlog)
            futures = self._replay(conn, wait)
            sock.settimeout(self.timeout)
        except CoreMQError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise Timeout(f"{self.host}:{self.port} did not answer in time while connecting") from exc
            raise ConnectionClosed(f"connection to {self.host}:{self.port} failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        self._welcome = welcome
        self._user = user
        return conn, futures

    def _log_in(self, sock: Stream, protocol: ClientProtocol, credentials: dict[str, str],
                backlog: list[Any], deadline: float | None) -> str | None:
        """Send ``coremq_auth`` and wait for its answer; what else arrives meanwhile joins ``backlog``."""
        number, data = protocol.authenticate(credentials)
        sock.sendall(data)
        while True:
            sock.settimeout(remaining(deadline) if deadline is not None else self.timeout)
            data = sock.recv(_READ_SIZE)
            if not data:
                raise ConnectionClosed(f"{self.host}:{self.port} closed the connection while logging in")
            reply = handshake_reply(protocol.receive_data(data), number, backlog)
            if reply is not None:
                return user_of(reply)

    def _replay(self, conn: _Connection, wait: bool) -> list[Future[JSONObject]]:
        """Send the subscriptions and options, then the resume's history request (if it may reconnect)."""
        futures: list[Future[JSONObject]] = []
        for number, data in self._state.replay(conn.protocol):
            if wait:
                futures.append(Future())
                conn.pending.add(number, futures[-1])
            conn.sock.sendall(data)
        since = self._resumer.plan(self._state.queues) if self.reconnect else {}
        if since:
            conn.sock.sendall(self._resync_frame(conn, conn.protocol, since)[1])
        return futures

    @staticmethod
    def _resync_frame(conn: _Connection, protocol: ClientProtocol, since: dict[str, int]) -> tuple[int, bytes]:
        """A history request of the resume, registered so the reader hands its reply to the resumer."""
        number, data = protocol.get_history(list(since), since, limit=RESUME_PAGE)
        conn.resyncs[number] = since
        return number, data

    def _read_welcome(
        self, sock: Stream, protocol: ClientProtocol, deadline: float | None
    ) -> tuple[Welcome, list[Any]]:
        while True:
            sock.settimeout(remaining(deadline) if deadline is not None else self.connect_timeout)
            data = sock.recv(_READ_SIZE)
            if not data:
                raise ConnectionClosed(f"{self.host}:{self.port} closed the connection before the welcome")
            welcome, backlog = split_welcome(protocol.receive_data(data))
            if welcome is not None:
                return welcome, backlog

    def _wait_connection(self, deadline: float | None) -> _Connection:
        """The live connection, waiting for a reconnect until ``deadline``."""
        with self._cond:
            while True:
                if self._ended is not None:
                    raise ConnectionClosed(str(self._ended))
                if self._auth_failure is not None:
                    raise AuthenticationFailed(self._auth_failure.reason, self._auth_failure.request)
                conn = self._conn
                if conn is not None and conn.alive:
                    return conn
                if self._reader is None:
                    raise ConnectionClosed("not connected: call connect() first")
                left = remaining(deadline)
                if left is not None and left <= 0:
                    raise ConnectionClosed(f"not connected to {self.host}:{self.port} within {self.timeout} s")
                self._cond.wait(left)

    # -- the reader thread -----------------------------------------------------

    def _run(self, conn: _Connection) -> None:
        error, orderly = ConnectionClosed("client is closed"), True
        try:
            while True:
                error, orderly = self._read(conn)
                self._lose(conn, error)
                if self._stop.is_set() or not self.reconnect:
                    break
                logger.info("connection to %s:%s lost (%s); reconnecting", self.host, self.port, error)
                next_conn = self._reconnect()
                if next_conn is None:
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
                conn, _ = self._establish_with_retries(None, first_delay=True, wait=False)
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
                self._cond.notify_all()
            self._connected(conn)
            return conn

    def _await_credentials(self, failure: AuthenticationFailed) -> bool:
        """Report refused credentials and wait for set_credentials(); False if closed meanwhile."""
        logger.error("%s:%s refused the credentials; waiting for new ones", self.host, self.port)
        self._reporter.report(failure)
        with self._cond:
            self._auth_failure = failure
            self._cond.notify_all()  # waiting requests raise it
            while self._auth_failure is failure and not self._stop.is_set():
                self._cond.wait()
        return not self._stop.is_set()

    def _connected(self, conn: _Connection) -> None:
        """Hand the welcome of a new connection to ``on_connect``."""
        notify_connected(self._on_connect, conn.welcome.message)

    def _read(self, conn: _Connection) -> tuple[ConnectionClosed, bool]:
        """Read and dispatch until the connection ends: ``(why, orderly)``."""
        routed = route(conn.backlog)
        while True:
            self._act(routed, conn)
            if routed.ended is not None:
                return routed.ended, routed.orderly
            self._wait_for_room()
            try:
                data = conn.sock.recv(_READ_SIZE)
            except TimeoutError:
                continue  # the socket timeout bounds writes; reads just go on
            except OSError as exc:
                return ConnectionClosed(f"connection lost: {exc}"), False
            if not data:
                return ConnectionClosed("connection closed"), self._stop.is_set()
            routed = route(conn.protocol.receive_data(data))

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

    def _act(self, routed: Routed, conn: _Connection) -> None:
        """Deliver, report and settle one batch; the resume's history replies and drop notices go to the resumer."""
        items, requests, replies = resume_batch(self._resumer, conn.resyncs, routed, self._state)
        self._dispatch(items)
        for since in requests:
            self._resync_later(conn, since)
        for error in routed.errors:
            self._reporter.report(error)
        settle(replies, conn.pending, self._reporter.report)

    def _dispatch(self, items: list[Item]) -> None:
        for item in items:
            if isinstance(item, Gap):
                self._gap_reporter.report(item)
            else:
                self._deliveries.put(item)

    def _resync_later(self, conn: _Connection, since: dict[str, int]) -> None:
        """Ask for history again from another thread: the reader never waits for the write lock."""
        def send() -> None:
            try:
                # No deadline: the lock comes free at the latest when the connection is lost.
                self._send(conn, lambda p: self._resync_frame(conn, p, since), None, None)
            except CoreMQError:
                pass  # the next connection asks again

        threading.Thread(target=send, name="coremq-resync", daemon=True).start()

    def _lose(self, conn: _Connection, error: ConnectionClosed) -> None:
        conn.pending.close(error)
        conn.abort()  # wakes a writer blocked in sendall, so the lock comes free
        with self._write_lock:
            conn.sock.close()
        with self._cond:
            if self._conn is conn:
                self._conn = None
            self._cond.notify_all()

    def _end(self, error: ConnectionClosed, *, orderly: bool) -> None:
        with self._cond:
            if self._ended is not None:
                return
            self._ended, self._orderly = error, orderly
            self._cond.notify_all()
        self._deliveries.put(_END)

    # -- requests --------------------------------------------------------------

    def _request(self, build: _Build, *, reply: bool = True, retry: bool = True) -> JSONObject | None:
        """Send one frame and wait for its reply, within ``timeout``.

        A request that never left (the connection was already gone) is always
        re-sent on the next connection; with ``retry`` (idempotent requests)
        so is one whose connection dropped before the reply came.
        """
        deadline = deadline_after(self.timeout)
        while True:
            conn = self._wait_connection(deadline)
            future: Future[JSONObject] | None = Future() if reply else None
            try:
                number = self._send(conn, build, future, deadline)
            except _NotSent:
                continue  # _wait_connection waits for the next connection or raises
            except ConnectionClosed:
                if not (retry and self.reconnect) or remaining(deadline) == 0:
                    raise
                continue
            if future is None:
                return None
            try:
                return self._result(future, deadline)
            except Timeout:
                conn.pending.discard(number)
                raise
            except ConnectionClosed:
                if not (retry and self.reconnect) or remaining(deadline) == 0:
                    raise

    def _send(self, conn: _Connection, build: _Build, future: Future[JSONObject] | None, deadline: float | None) -> int:
        left = remaining(deadline)
        if not self._write_lock.acquire(timeout=-1 if left is None else left):
            raise Timeout(f"could not send within {self.timeout} s: other threads hold the connection")
        try:
            if not conn.alive:
                raise _NotSent("connection lost")
            number, data = build(conn.protocol)
            if future is not None:
                try:
                    conn.pending.add(number, future)
                except ConnectionClosed as exc:
                    raise _NotSent(str(exc)) from None
            try:
                conn.sock.sendall(data)
            except OSError as exc:
                # Part of the frame may be out: the stream is unusable now.
                lost = ConnectionClosed(f"connection lost while sending: {exc}")
                conn.pending.close(lost)
                conn.abort()
                if isinstance(exc, TimeoutError):
                    raise Timeout(f"sending took longer than {self.timeout} s; connection dropped") from exc
                raise lost from exc
            return number
        finally:
            self._write_lock.release()

    def _result(self, future: Future[JSONObject], deadline: float | None) -> JSONObject:
        try:
            return future.result(timeout=remaining(deadline))
        except TimeoutError as exc:
            if isinstance(exc, CoreMQError):
                raise
            raise Timeout(f"no reply from {self.host}:{self.port} within {self.timeout} s") from None

    def subscribe(self, *queues: str) -> JSONObject:
        """Subscribe to ``queues`` (kept for reconnects); return the broker's reply."""
        names = [validate_queue_name(q) for q in queues]
        added = self._state.add_queues(names)
        self._resumer.forget(added)
        try:
            reply = self._request(lambda p: p.subscribe(names))
        except ServerError:
            self._state.discard_queues(added)
            raise
        if added and self.resume and self.reconnect:
            self._probe(added)
        return reply  # type: ignore[return-value]

    def _probe(self, queues: list[str]) -> None:
        """Learn where new subscriptions stand, to resume from there after a reconnect (no wait)."""
        conn = self._conn
        if conn is None:
            return
        try:
            self._send(conn, lambda p: self._resync_frame(conn, p, self._resumer.plan(queues)), None,
                       deadline_after(self.timeout))
        except CoreMQError:
            pass  # a reconnect probes every subscribed queue anyway

    def unsubscribe(self, *queues: str) -> JSONObject:
        """Unsubscribe from ``queues``; return the broker's reply."""
        names = [validate_queue_name(q) for q in queues]
        self._state.discard_queues(names)
        self._resumer.forget(names)
        return self._request(lambda p: p.unsubscribe(names))  # type: ignore[return-value]

    def set_options(self, **options: Any) -> JSONObject:
        """Set options (``None`` removes one; kept for reconnects); return the reply with ``options``."""
        previous = self._state.update_options(options)
        try:
            return self._request(lambda p: p.set_options(options))  # type: ignore[return-value]
        except ServerError:
            self._state.restore_options(previous)
            raise

    def publish(self, queue: str, message: Any, *, reply: bool = True) -> JSONObject | None:
        """Publish ``message`` (a dict, list or str) to ``queue``.

        Returns the broker's reply (``{"response": "OK: Message sent", "id": n, ...}``)
        or raises its ``ERROR:`` as :class:`ServerError`. With ``reply=False``,
        or while option ``reply`` is false, returns None once the frame is
        sent; an error the broker still reports goes to ``on_error``.
        A publish is never sent twice: if the connection drops before the
        reply, :class:`ConnectionClosed` is raised.
        """
        validate_queue_name(queue)
        wrap(message)
        wait = reply and not self._state.replies_off
        return self._request(lambda p: p.publish(queue, message), reply=wait, retry=False)

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
        names = [validate_queue_name(q) for q in queues]
        after = since_map(names, since)
        return self._request(lambda p: p.get_history(names, after, limit=limit))  # type: ignore[return-value]

    def get_history(self, *queues: str, since: Mapping[str, int] | int | None = None) -> dict[str, list[Any]]:
        """``{queue: [message, ...]}``, oldest first, each message as the publisher sent it.

        Follows the broker's pages (``more``): the whole history kept, however
        large. :meth:`history` is one raw page.
        """
        pages = HistoryPages([validate_queue_name(q) for q in queues], since)
        reply = self.history(*pages.queues, since=pages.since)
        while (after := pages.take(reply)) is not None:
            reply = self.history(*after, since=after)
        return pages.messages

    def status(self, **detail: bool) -> JSONObject:
        """The broker's description of itself (connections, queues, counters).

        ``connections=True``, ``queues=True``, ``series=True`` add the list of
        connections, of public queues, and the per-second rates of the last minute.
        """
        return self._request(lambda p: p.status(**detail))  # type: ignore[return-value]

    def admin(self, action: str, **fields: Any) -> JSONObject:
        """An administrator's request (``"disconnect"`` with ``connection=``, ``"purge"`` with ``queue=``).

        The broker's access policy decides who may; a refusal raises :class:`PermissionDenied`.
        Never re-sent after a lost connection.
        """
        return self._request(lambda p: p.admin(action, **fields), retry=False)  # type: ignore[return-value]

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
            raise ConnectionClosed(str(self._ended))
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
                if self._orderly:
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

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected" if self.connected else "disconnected"
        return f"<MessageQueue {self.host}:{self.port} {state} id={self.connection_id}>"
