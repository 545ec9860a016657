"""The client's session, sans-I/O: what both front ends decide, written once.

:class:`MessageQueue` (a reader thread) and :class:`AsyncMessageQueue` (a
reader task) are thin I/O loops around one :class:`Session`, as the
``websockets`` package runs its sync and asyncio connections over one
protocol. The session never reads, writes, sleeps or waits:

- **a connection** is a :class:`Link`. Bytes read go to
  :meth:`Link.handshake` until :attr:`Link.ready` (welcome, login, then the
  replay of subscriptions and options and the resume's history request),
  then to :meth:`Link.receive_data`, which returns a :class:`Batch`; the
  front end writes what they return and hands the batch to
  :meth:`Session.act`.
- **reconnecting**: :meth:`Session.retry_delay` says how long to wait before
  the next attempt (or re-raises: give up); a client given several servers
  moves to the next one (:attr:`Session.server`) after each failed attempt
  and each lost connection; :meth:`Session.check_usable`
  says whether requests may use a link now, must wait, or must fail.
- **requests**: each public method's work is one :class:`Request` (send a
  frame, maybe wait for its reply: the reply is the result), or an
  *operation*, a generator that yields requests and :class:`Probe` (ask
  where new subscriptions stand; no wait) and returns the method's result.
  A front end's ``_perform`` carries them out with its own I/O and sends
  back each reply (or throws its error in).
  Keeping state (subscriptions, options) before a request and undoing it
  when the broker refuses happens here, once.

Connection states: *connecting* (no welcome yet) -> *logging in* (with
credentials) -> *ready* (replay sent; live) -> *lost* (:meth:`Link.lose`).
A lost link is never used again; the client opens a new one after a
backoff, or ends (:meth:`Session.end`) for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Mapping, TypeVar

from ._common import (
    ConnectCallback,
    ErrorCallback,
    ErrorReporter,
    GapCallback,
    GapReporter,
    HistoryPages,
    JSONObject,
    PendingReplies,
    Routed,
    SessionState,
    backoff_delays,
    check_backoff,
    check_max_pending,
    credentials_from,
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
from .codec import JSONCodec, validate_queue_name
from .errors import AuthenticationFailed, ConnectionClosed, CoreMQError, LocalUsageError, ServerError, Timeout
from .protocol import ClientProtocol, Gap, Welcome, wrap
from .resume import RESUME_PAGE, Item, Resumer

__all__ = ["Batch", "Done", "Link", "Operation", "Probe", "Request", "Server", "Session", "advance"]

T = TypeVar("T")
#: Where a client connects: ``(host, port)``, or a ``ws://``/``wss://`` URL.
Server = tuple[str, int] | str
Build = Callable[[ClientProtocol], tuple[int, bytes]]


@dataclass(slots=True)  # not frozen: built for every publish, and a frozen one is slower to make
class Request:
    """Send the frame ``build`` makes; with ``reply``, wait for its reply within the timeout.

    A request that never left is always sent again on the next connection;
    with ``retry`` (idempotent requests) so is one whose connection dropped
    before its reply came.
    """

    build: Build
    reply: bool = True
    retry: bool = True


@dataclass(frozen=True, slots=True)
class Probe:
    """Ask the live connection, if any, where ``queues`` stand (no wait; errors ignored)."""

    queues: list[str]


#: A public method's work: yields instructions, receives replies, returns the result.
Operation = Generator[Request | Probe, JSONObject | None, T]


@dataclass(slots=True)
class Batch:
    """What one read brought, sorted for :meth:`Session.act`."""

    items: list[Item]  # deliveries to queue and gaps to report, in order
    asks: list[dict[str, int]]  # history requests of the resume to send ({queue: since})
    routed: Routed  # its errors to report, replies to settle, and whether the link ended

    @property
    def ended(self) -> ConnectionClosed | None:
        return self.routed.ended

    @property
    def orderly(self) -> bool:
        return self.routed.orderly


class Link:
    """One connection's state, from before its welcome until it is lost.

    ``future`` makes the future a request waits on (``concurrent.futures.Future``
    or the event loop's); with ``wait`` the replayed requests get one each
    (:attr:`replayed`: ``connect()`` waits for the broker to confirm them),
    without their errors go to the session's error reporter.
    """

    def __init__(self, session: "Session", *, wait: bool, future: Callable[[], Any]) -> None:
        self.session = session
        self.protocol = session.protocol(codec=session.codec, max_frame_size=session.max_frame_size)
        self.pending: PendingReplies[Any] = PendingReplies()
        self.resyncs: dict[int, dict[str, int]] = {}  # history requests of the resume, by number
        self.welcome: Welcome | None = None
        self.user: str | None = None
        self.replayed: list[Any] = []
        self.ready = False
        self._wait = wait
        self._future = future
        self._backlog: list[Any] = []  # events read with the handshake, for the first batch
        self._login: int | None = None  # the number of the coremq_auth request awaiting its reply
        #: Set by a front end whose transport knows before the reader that it is closing.
        self.closing: Callable[[], bool] = lambda: False

    @property
    def alive(self) -> bool:
        """False once lost (or its transport is closing): requests must wait for the next link."""
        return self.pending.closed is None and not self.closing()

    # -- the handshake ---------------------------------------------------------

    def handshake(self, data: bytes) -> bytes:
        """Take bytes read before :attr:`ready`; return the bytes to write next (maybe none).

        Raises ConnectionClosed (the stream broke or did not start with a
        welcome), AuthenticationFailed (credentials refused) or the
        ``ServerError`` the broker refused the connection with.
        """
        events = self.protocol.receive_data(data)
        if self.welcome is None:
            self.welcome, events = split_welcome(events)
            if self.welcome is None:
                return b""
            self.session.resumer.connected(self.welcome.connection_id)
            self._backlog += events
            credentials = self.session.credentials
            if not credentials:
                return self._replay()
            self._login, request = self.protocol.authenticate(credentials)
            return request
        reply = handshake_reply(events, self._login, self._backlog) if self._login is not None else None
        if reply is None:
            return b""
        self.user = user_of(reply)
        self._login = None
        return self._replay()

    def _replay(self) -> bytes:
        """The subscriptions and options, then the resume's history request (if it may reconnect)."""
        frames = []
        for number, data in self.session.state.replay(self.protocol):
            if self._wait:
                self.replayed.append(self._future())
                self.pending.add(number, self.replayed[-1])
            frames.append(data)
        if self.session.reconnect:  # without reconnects there is nothing to resume
            frames.append(self.resync(self.session.resumer.plan(self.session.state.queues)))
        self.ready = True
        return b"".join(frames)

    # -- live --------------------------------------------------------------------

    def first_batch(self) -> Batch:
        """What arrived with the handshake, as the first batch to act on."""
        backlog, self._backlog = self._backlog, []
        return self._batch(route(backlog))

    def receive_data(self, data: bytes | OSError) -> Batch:
        """Take what a read while live brought: bytes, ``b""`` at the end of the stream, or the read's error."""
        if isinstance(data, OSError):
            return Batch([], [], Routed(ended=ConnectionClosed(f"connection lost: {data}")))
        if not data:
            return Batch([], [], Routed(ended=ConnectionClosed("connection closed")))
        return self._batch(route(self.protocol.receive_data(data)))

    def _batch(self, routed: Routed) -> Batch:
        session = self.session
        echo = session.state.echo or self.protocol.echoes_own
        items, asks, replies = resume_batch(session.resumer, self.resyncs, routed, session.state, echo=echo)
        routed.replies = replies
        return Batch(items, asks, routed)

    def resync(self, since: dict[str, int]) -> bytes:
        """A history request of the resume, registered so its reply goes to the resumer; b"" if none."""
        if not since:
            return b""
        number, data = self.protocol.get_history(list(since), since, limit=RESUME_PAGE)
        self.resyncs[number] = since
        return data

    def lose(self, error: ConnectionClosed) -> None:
        """The connection is gone: fail every request waiting on it. Idempotent."""
        self.pending.close(error)


class Session:
    """Everything a client keeps across connections, and the decisions about them.

    Raises ValueError for a bad ``backoff``/``max_backoff``, ``max_pending``
    or combination of credentials.
    """

    def __init__(
        self,
        *,
        queues: tuple[str, ...] | list[str],
        options: Mapping[str, Any] | None,
        reconnect: bool,
        backoff: float,
        max_backoff: float,
        codec: JSONCodec,
        max_frame_size: int,
        credentials: dict[str, str] | None,
        resume: bool,
        on_error: ErrorCallback | None,
        on_connect: ConnectCallback | None,
        on_gap: GapCallback | None,
        max_pending: int | None,
        protocol: type[ClientProtocol] | Callable[..., Any] = ClientProtocol,
        servers: list[Server] | None = None,
    ) -> None:
        check_backoff(backoff, max_backoff)
        check_max_pending(max_pending)
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.protocol = protocol  # the wire protocol's class: TCP frames, or the browser protocol
        self.codec = codec
        self.max_frame_size = max_frame_size
        self.credentials = credentials
        self.state = SessionState(queues, options)
        self.resumer = Resumer(enabled=resume, max_held=max_pending)
        self.reporter = ErrorReporter(on_error)
        self.gap_reporter = GapReporter(on_gap)
        self.on_connect = on_connect
        self.welcome: Welcome | None = None  # of the current (or last) connection
        self.user: str | None = None
        self.auth_failure: AuthenticationFailed | None = None  # refused; waiting for new credentials
        self.ended: ConnectionClosed | None = None  # no connection will ever come again
        self.orderly = False
        #: The servers to connect to, in turn; ``server_index`` is the one of the current attempt.
        self.servers: list[Server] = list(servers or [("127.0.0.1", 0)])
        self.server_index = 0

    # -- connections ---------------------------------------------------------------

    def set_credentials(self, token: str | None, username: str | None, password: str | None) -> None:
        """Log in with these from the next connection on; a client waiting after a refusal tries them."""
        self.credentials = credentials_from(token, username, password)
        self.auth_failure = None

    @property
    def server(self) -> Server:
        """The server the next (or current) connection goes to."""
        return self.servers[self.server_index]

    def next_server(self) -> None:
        """Move on to the next server of the list (the first after the last); one server: no change."""
        self.server_index = (self.server_index + 1) % len(self.servers)

    def delays(self) -> Iterator[float]:
        """The reconnect delays of one series of attempts (see :func:`backoff_delays`)."""
        return backoff_delays(self.backoff, self.max_backoff)

    def retry_delay(self, error: CoreMQError, delays: Iterator[float], deadline: float | None, *,
                    wait: bool) -> float:
        """After a failed attempt to connect: how long to wait before the next one.

        Re-raises ``error`` when no attempt should follow: reconnecting is
        off, the next one could not start before ``deadline``, the
        credentials were refused, or the broker refused the connection while
        a caller waits (``wait``: ``connect()``). Without a caller, a refusal
        (say, too many connections for this user) is reported and retried.
        The next attempt goes to the next server of the list.
        """
        if isinstance(error, (ConnectionClosed, Timeout)):
            if not self.reconnect:
                raise error
            delay = next(delays)
            left = remaining(deadline)
            if left is not None and left <= delay:
                raise error
            self.next_server()
            return delay
        if isinstance(error, ServerError) and not (wait or isinstance(error, AuthenticationFailed)):
            self.reporter.report(error)
            self.next_server()
            return next(delays)
        raise error

    def reconnects_after(self, error: ConnectionClosed, where: str, closing: bool) -> bool:
        """A connection to ``where`` was lost: whether to open another (logged), or end (closing, or no reconnect).

        The next connection goes to the next server of the list.
        """
        if closing or not self.reconnect:
            return False
        self.next_server()
        logger.info("connection to %s lost (%s); reconnecting to %s", where, error, self.server_name)
        return True

    @property
    def server_name(self) -> str:
        """:attr:`server` as ``host:port``, or its URL."""
        server = self.server
        return server if isinstance(server, str) else f"{server[0]}:{server[1]}"

    def connected(self, link: Link) -> None:
        """``link`` is the client's connection now: its welcome and user are the client's."""
        self.welcome = link.welcome
        self.user = link.user

    def notify_connected(self, link: Link) -> Any:
        """Call ``on_connect`` with ``link``'s welcome; return what it returned (maybe a coroutine)."""
        assert link.welcome is not None
        return notify_connected(self.on_connect, link.welcome.message)

    def end(self, error: ConnectionClosed, *, orderly: bool) -> bool:
        """No connection will come any more; False if the client had ended already."""
        if self.ended is not None:
            return False
        self.ended, self.orderly = error, orderly
        return True

    def check_usable(self, link: Link | None, *, started: bool) -> bool:
        """Whether a request may use ``link`` (the current one) now; False: wait for a reconnect.

        Raises ConnectionClosed once the client has ended or if it was never
        connected (``started`` false), and the refused credentials'
        AuthenticationFailed while it waits for new ones.
        """
        if self.ended is not None:
            raise ConnectionClosed(str(self.ended))
        if self.auth_failure is not None:
            raise AuthenticationFailed(self.auth_failure.reason, self.auth_failure.request)
        if link is not None and link.alive:
            return True
        if not started:
            raise ConnectionClosed("not connected: call connect() first")
        return False

    def may_retry(self, request: Request, deadline: float | None) -> bool:
        """After the connection of ``request`` dropped: whether to send it again on the next one."""
        return request.retry and self.reconnect and remaining(deadline) != 0

    # -- what a batch asks of the front end -------------------------------------------

    def act(self, batch: Batch, link: Link, deliver: Callable[[Any], Any],
            ask: Callable[[dict[str, int]], Any]) -> None:
        """Deliver, report, ask and settle one batch, in that order.

        ``deliver(delivery)`` queues a message; gaps and errors go to the
        reporters; ``ask(since)`` sends a history request of the resume.
        Replies are settled last, so a caller woken by its reply finds every
        message and error that came before it already queued or reported.
        """
        for item in batch.items:
            if isinstance(item, Gap):
                self.gap_reporter.report(item)
            else:
                deliver(item)
        for since in batch.asks:
            ask(since)
        for error in batch.routed.errors:
            self.reporter.report(error)
        settle(batch.routed.replies, link.pending, self.reporter.report)

    # -- operations: the public methods' work --------------------------------------------

    def subscribe(self, queues: tuple[str, ...]) -> Operation[JSONObject]:
        names = [validate_queue_name(q) for q in queues]
        added = self.state.add_queues(names)
        self.resumer.forget(added)
        try:
            reply = yield Request(lambda p: p.subscribe(names))
        except (ServerError, LocalUsageError):  # refused, or could not be sent at all: not kept
            self.state.discard_queues(added)
            raise
        if added and self.resumer.enabled and self.reconnect:
            yield Probe(added)  # to resume from where they stand now after a reconnect
        return reply  # type: ignore[return-value]

    def unsubscribe(self, queues: tuple[str, ...]) -> Request:
        names = [validate_queue_name(q) for q in queues]
        self.state.discard_queues(names)
        self.resumer.forget(names)
        return Request(lambda p: p.unsubscribe(names))

    def set_options(self, options: dict[str, Any]) -> Operation[JSONObject]:
        previous = self.state.update_options(options)
        try:
            return (yield Request(lambda p: p.set_options(options)))  # type: ignore[return-value]
        except (ServerError, LocalUsageError):
            self.state.restore_options(previous)
            raise

    def publish(self, queue: str, message: Any, reply: bool) -> Request:
        validate_queue_name(queue)
        wrap(message)
        wait = reply and not self.state.replies_off
        return Request(lambda p: p.publish(queue, message), wait, False)

    def history(self, queues: tuple[str, ...], since: Mapping[str, int] | int | None,
                limit: int | None) -> Request:
        names = [validate_queue_name(q) for q in queues]
        after = since_map(names, since)
        return Request(lambda p: p.get_history(names, after, limit=limit))

    def get_history(self, queues: tuple[str, ...], since: Mapping[str, int] | int | None
                    ) -> Operation[dict[str, list[Any]]]:
        pages = HistoryPages([validate_queue_name(q) for q in queues], since)
        reply = yield self.history(tuple(pages.queues), pages.since, None)
        while (after := pages.take(reply)) is not None:
            reply = yield self.history(tuple(after), after, None)
        return pages.messages

    def status(self, detail: dict[str, bool]) -> Request:
        return Request(lambda p: p.status(**detail))

    def admin(self, action: str, fields: dict[str, Any]) -> Request:
        return Request(lambda p: p.admin(action, **fields), retry=False)


@dataclass(frozen=True, slots=True)
class Done:
    """An operation returned ``value``."""

    value: Any


def advance(operation: Operation[T], result: Any, error: BaseException | None) -> Request | Probe | Done:
    """Resume ``operation`` with ``result`` (or throw ``error`` into it): its next instruction, or its end."""
    try:
        if error is not None:
            return operation.throw(error)
        return operation.send(result)
    except StopIteration as stop:
        return Done(stop.value)
