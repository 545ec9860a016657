"""Pure helpers shared by the blocking and the asyncio client: no sockets, no event loop.

Both front ends keep the same bookkeeping (what to re-apply on reconnect, which
request waits for which reply, where unclaimed errors go) and differ only in how
they wait. Everything that does not wait lives here, once.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Protocol, TypeVar

from .codec import validate_queue_name
from .errors import ConnectionClosed, CoreMQError, FrameTooLarge, MessageError, ProtocolError, ServerError, SlowConsumer
from .protocol import ID, OPTION_ECHO, OPTION_REPLY, Bye, ClientProtocol, Delivery, Gap, Reply, Welcome, error_for, unwrap
from .resume import Item, Resumer, bounds

__all__ = [
    "ConnectCallback",
    "ErrorCallback",
    "ErrorReporter",
    "GapCallback",
    "GapReporter",
    "HistoryPages",
    "JSONObject",
    "MAX_PENDING",
    "PendingReplies",
    "Routed",
    "SessionState",
    "backoff_delays",
    "check_backoff",
    "credentials_from",
    "deadline_after",
    "handshake_reply",
    "history_messages",
    "notify_connected",
    "remaining",
    "check_max_pending",
    "oversized_resyncs",
    "resume_batch",
    "resume_reply",
    "route",
    "settle",
    "since_map",
    "split_welcome",
    "user_of",
]

logger = logging.getLogger("coremq_client")

#: How many unclaimed errors a client keeps in ``errors`` for inspection.
RECENT_ERRORS = 100

#: The default ``max_pending``: deliveries a client keeps for the application to
#: receive before its reader stops reading the socket (TCP then pushes back on
#: the broker, whose slow-consumer policy decides). Also the most live
#: deliveries held per queue while it is resynced.
MAX_PENDING = 10_000

ErrorCallback = Callable[[CoreMQError], Any]
#: Called with the welcome object of every new connection (the first and each reconnect).
ConnectCallback = Callable[[dict], Any]
#: Called with every :class:`~coremq_client.protocol.Gap`: messages that cannot be delivered.
GapCallback = Callable[[Gap], Any]
#: A decoded JSON object: a reply, a welcome, a stored message.
JSONObject = dict[str, Any]


# -- time ----------------------------------------------------------------

def deadline_after(seconds: float | None) -> float | None:
    """The monotonic time ``seconds`` from now, or None for "no limit"."""
    return None if seconds is None else time.monotonic() + seconds


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (never negative), or None for "no limit"."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def check_max_pending(max_pending: int | None) -> None:
    """Raise ValueError unless ``max_pending`` is None (no bound) or a positive int."""
    if max_pending is not None and (isinstance(max_pending, bool) or not isinstance(max_pending, int)
                                    or max_pending < 1):
        raise ValueError(f"max_pending must be a positive int or None, not {max_pending!r}")


def check_backoff(backoff: float, max_backoff: float) -> None:
    """Raise ValueError unless ``0 < backoff <= max_backoff``."""
    if not 0 < backoff <= max_backoff:
        raise ValueError(f"need 0 < backoff <= max_backoff, got backoff={backoff}, max_backoff={max_backoff}")


def backoff_delays(initial: float, maximum: float, *, rand: Callable[[], float] = random.random) -> Iterator[float]:
    """Yield reconnect delays: doubling from ``initial`` up to ``maximum``, with jitter.

    Each delay lies in ``[d/2, d]`` for the current step ``d``, so clients cut
    off by the same broker restart do not all come back in the same instant,
    and no delay is longer than ``maximum``.
    """
    step = min(initial, maximum)
    while True:
        yield step * (0.5 + rand() / 2)
        step = min(maximum, step * 2)


# -- what is re-applied on reconnect ---------------------------------------

class SessionState:
    """Subscriptions and options that outlive one connection.

    Every (re)connect replays :meth:`replay`. Callers record a change before
    sending it (so a reconnect racing the request still applies it) and undo
    it if the broker refuses. Safe to share between threads.
    """

    def __init__(self, queues: Iterable[str] = (), options: Mapping[str, Any] | None = None) -> None:
        if isinstance(queues, str):  # one name, not its characters
            queues = [queues]
        self._lock = threading.Lock()
        self._queues: dict[str, None] = {validate_queue_name(q): None for q in queues}
        self._options: dict[str, Any] = {k: v for k, v in (options or {}).items() if v is not None}

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues subscribed to, in the order first asked for."""
        with self._lock:
            return tuple(self._queues)

    @property
    def options(self) -> dict[str, Any]:
        """A copy of the options in force (removed ones are absent)."""
        with self._lock:
            return dict(self._options)

    @property
    def replies_off(self) -> bool:
        """True when option ``reply`` is false: publishes get no OK reply."""
        with self._lock:
            return self._options.get(OPTION_REPLY) is False

    @property
    def echo(self) -> bool:
        """True when option ``echo`` is on: own publishes are delivered too."""
        with self._lock:
            return self._options.get(OPTION_ECHO) is True

    def add_queues(self, queues: Iterable[str]) -> list[str]:
        """Record subscriptions; return the names that were not recorded before."""
        with self._lock:
            added = [q for q in queues if q not in self._queues]
            self._queues.update(dict.fromkeys(added))
            return added

    def discard_queues(self, queues: Iterable[str]) -> None:
        """Forget subscriptions (after an unsubscribe, or a refused subscribe)."""
        with self._lock:
            for name in queues:
                self._queues.pop(name, None)

    def update_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``options`` (None removes one); return the previous values for :meth:`restore_options`."""
        with self._lock:
            previous = {name: self._options.get(name) for name in options}
            self._apply(options)
            return previous

    def restore_options(self, previous: Mapping[str, Any]) -> None:
        """Undo :meth:`update_options` after the broker refused it."""
        with self._lock:
            self._apply(previous)

    def _apply(self, options: Mapping[str, Any]) -> None:
        for name, value in options.items():
            if value is None:
                self._options.pop(name, None)
            else:
                self._options[name] = value

    def replay(self, protocol: ClientProtocol) -> list[tuple[int, bytes]]:
        """The requests that restore this state on a fresh connection: ``(number, bytes)`` each."""
        with self._lock:
            queues, options = list(self._queues), dict(self._options)
        frames = []
        if queues:
            frames.append(protocol.subscribe(queues))
        if options or (not queues and protocol.needs_first_request):
            # Always at least one request: the broker closes a connection that sends no frame
            # within FIRST_FRAME_TIMEOUT of its welcome, and a client may only wait for messages.
            frames.append(protocol.set_options(options))
        return frames


# -- replies ---------------------------------------------------------------

class _Settable(Protocol):
    def done(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException) -> None: ...


F = TypeVar("F", bound=_Settable)


class PendingReplies(Generic[F]):
    """The futures of one connection's requests, keyed by request number.

    Works with :class:`concurrent.futures.Future` and :class:`asyncio.Future`
    alike. Once :meth:`close` ran, :meth:`add` raises ConnectionClosed, so no
    request can wait on a connection that is already gone.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[int, F] = {}
        self.closed: ConnectionClosed | None = None

    def add(self, number: int, future: F) -> None:
        with self._lock:
            if self.closed is not None:
                raise ConnectionClosed(str(self.closed))
            self._futures[number] = future

    def discard(self, number: int) -> None:
        """Stop waiting for ``number`` (its caller gave up); a late error is then reported."""
        with self._lock:
            self._futures.pop(number, None)

    def resolve(self, reply: Reply) -> bool:
        """Complete the future waiting for ``reply``; False when nobody waits for it."""
        if reply.request is None:
            return False
        with self._lock:
            future = self._futures.pop(reply.request, None)
        if future is None or future.done():
            return False
        reason = reply.error
        if reason is None:
            future.set_result(reply.message)
        else:
            future.set_exception(error_for(reason, reply.request))
        return True

    def close(self, error: ConnectionClosed) -> None:
        """Fail every waiting future with ``error`` and refuse new ones. Idempotent."""
        with self._lock:
            if self.closed is None:
                self.closed = error
            futures, self._futures = list(self._futures.values()), {}
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionClosed(str(error)))


@dataclass
class Routed:
    """One batch of received events, sorted for the front end to act on in this order.

    Act on :attr:`stream` and :attr:`errors` first, then :func:`settle` the
    replies: a caller woken by its reply then finds every message and every
    error that arrived before that reply already queued or reported.
    """

    #: Deliveries and the broker's drop notices (unnumbered replies with ``dropped``), in the
    #: order received: a notice tells where in the stream the dropped messages belonged.
    stream: list[Delivery | Reply] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    #: Errors that answer no request: unnumbered ``ERROR:`` notices, bad frames.
    errors: list[CoreMQError] = field(default_factory=list)
    #: Set when the connection must end: the broker said BYE, or the stream broke.
    ended: ConnectionClosed | None = None
    orderly: bool = False


def route(events: Iterable[Welcome | Reply | Delivery | Bye | ProtocolError]) -> Routed:
    """Sort received events; see :class:`Routed`. Events after a BYE or a fatal error are dropped."""
    routed = Routed()
    for event in events:
        if isinstance(event, Delivery):
            routed.stream.append(event)
        elif isinstance(event, Reply):
            if event.request is None and isinstance(event.message.get("dropped"), dict):
                routed.stream.append(event)
            else:
                routed.replies.append(event)
        elif isinstance(event, Bye):
            routed.ended, routed.orderly = ConnectionClosed("the broker closed the connection (BYE)"), True
            break
        elif isinstance(event, ProtocolError):
            routed.errors.append(event)
            if event.fatal:
                routed.ended = ConnectionClosed(f"protocol error from the broker: {event}")
                break
        # A Welcome comes only first and is taken by split_welcome.
    return routed


def settle(replies: Iterable[Reply], pending: PendingReplies[Any], report: Callable[[CoreMQError], Any]) -> None:
    """Complete the futures of ``replies`` in order; ``report`` an ``ERROR:`` nobody waits for.

    Such an error (the answer to a fire-and-forget publish, or to a request
    whose caller timed out) is reported before any later reply is delivered.
    """
    for reply in replies:
        if not pending.resolve(reply) and reply.error is not None:
            report(error_for(reply.error, reply.request))


def resume_batch(resumer: Resumer, resyncs: dict[int, dict[str, int]], routed: Routed, state: SessionState,
                 *, echo: bool | None = None) -> tuple[list[Item], list[dict[str, int]], list[Reply]]:
    """The resume's part of one batch: ``(items to act on in order, history requests to send, other replies)``.

    Live deliveries go through the resumer in the order received; a drop
    notice starts a resync of its queues that ``state`` subscribes to (its error, a
    :class:`SlowConsumer`, joins ``routed.errors``); the replies to the
    resume's history requests (``resyncs``, by number) are taken by the
    resumer. Each request is ``{queue: since}``, to be sent with
    ``limit=RESUME_PAGE`` and registered in ``resyncs``. The other replies are
    returned for :func:`settle`.
    """
    items: list[Item] = []
    requests: list[dict[str, int]] = []
    echo = state.echo if echo is None else echo  # the transport may deliver own publishes anyway
    for event in routed.stream:
        if isinstance(event, Delivery):
            items += resumer.accept(event)
            continue
        dropped: dict[str, Any] = event.message["dropped"]
        gaps, since = resumer.dropped(dropped, state.queues)
        items += gaps
        if since:
            requests.append(since)
        routed.errors.append(SlowConsumer(event.error or "slow consumer: messages dropped",
                                          {queue: bounds(value if isinstance(value, dict) else {})
                                           for queue, value in dropped.items()}))
    replies = []
    for reply in routed.replies:
        resumed = resume_reply(resumer, resyncs, reply, echo=echo)
        if resumed is None:
            replies.append(reply)
            continue
        got, again, refused = resumed
        if refused is not None:
            routed.errors.append(refused)
        items += got
        if again:
            requests.append(again)
    items += oversized_resyncs(resumer, resyncs, routed.errors, echo=echo)
    return items, requests, replies


def resume_reply(resumer: Resumer, requests: dict[int, dict[str, int]], reply: Reply, *, echo: bool
                 ) -> tuple[list[Item], dict[str, int], ServerError | None] | None:
    """Hand ``reply`` to ``resumer`` if it answers one of its history ``requests`` (by number); else None.

    Returns the items to act on in order, ``{queue: since}`` to ask history
    for again (maybe empty), and the error to report if the broker refused.
    """
    since = requests.pop(reply.request, None) if reply.request is not None else None
    if since is None:
        return None
    if reply.error is not None:
        return resumer.failed(since, echo=echo), {}, error_for(reply.error, reply.request)
    items, again = resumer.history(since, reply.message, echo=echo)
    return items, again, None


def oversized_resyncs(resumer: Resumer, requests: dict[int, dict[str, int]], errors: Iterable[CoreMQError], *,
                      echo: bool) -> list[Item]:
    """Give up the resume's outstanding history ``requests`` if a frame was too large to read.

    That frame may have been their reply (a long history over the client's
    ``max_frame_size``); it was skipped, so the reply will never come. What
    the resumer held is released and what is missing is reported as a gap.
    """
    if not requests or not any(isinstance(error, FrameTooLarge) for error in errors):
        return []
    items: list[Item] = []
    for number in sorted(requests):
        items += resumer.failed(requests.pop(number), echo=echo)
    return items


def split_welcome(events: list[Any]) -> tuple[Welcome | None, list[Any]]:
    """Find the welcome among the first events: ``(welcome or None, events after it)``.

    Raises ConnectionClosed if anything but a welcome comes first.
    """
    if not events:
        return None, []
    first = events[0]
    if isinstance(first, Welcome):
        return first, events[1:]
    raise ConnectionClosed(f"the broker did not start with a welcome: {first!r}")


def history_messages(reply: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The ``{queue: [message, ...]}`` of a history reply, each message unwrapped."""
    history = reply.get("history")
    if not isinstance(history, dict):
        history = reply.get("response")  # where the earliest release put it
    if not isinstance(history, dict):
        raise MessageError("the history reply holds no history object")
    return {queue: [unwrap(m) for m in messages] for queue, messages in history.items() if isinstance(messages, list)}


class HistoryPages:
    """The whole history of some queues, gathered across the broker's pages.

    The broker cuts a history reply at its frame size and names the queues cut
    short in ``more``; :meth:`take` adds one reply and says what to ask next.
    """

    def __init__(self, queues: list[str], since: Mapping[str, int] | int | None) -> None:
        self.queues = queues
        self.since = since_map(queues, since)
        self.messages: dict[str, list[Any]] = {queue: [] for queue in queues}

    def take(self, reply: Mapping[str, Any]) -> dict[str, int] | None:
        """Add one reply's messages; the ``since`` of the next request, or None when all are in."""
        history = reply.get("history")
        more = reply.get("more")
        pages = {} if not isinstance(history, dict) else history
        gathered = 0
        for queue, messages in history_messages(reply).items():
            self.messages.setdefault(queue, []).extend(messages)
            gathered += len(messages)
        if not isinstance(more, dict) or not gathered:  # the last page (or one that moves nothing on)
            return None
        after: dict[str, int] = {}
        for queue in more:
            stored = pages.get(queue)
            ids = [m.get(ID) for m in stored if isinstance(m, dict)] if isinstance(stored, list) else []
            ids = [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]
            after[queue] = ids[-1] if ids else (self.since or {}).get(queue, 0)
        self.since = after or None
        return after or None


def since_map(queues: list[str], since: Mapping[str, int] | int | None) -> dict[str, int] | None:
    """Normalise ``since``: one id for every queue, a per-queue mapping, or None for all history."""
    if since is None or isinstance(since, Mapping):
        return dict(since) if since else None
    if isinstance(since, bool) or not isinstance(since, int):
        raise TypeError(f"since must be an int or a mapping of queue to int, not {since!r}")
    return dict.fromkeys(queues, since)


def credentials_from(token: str | None, username: str | None, password: str | None) -> dict[str, str] | None:
    """The ``coremq_auth`` object for these constructor arguments, or None for an anonymous client.

    Raises ValueError unless it is a token alone, or a username with a password.
    """
    if token is not None:
        if username is not None or password is not None:
            raise ValueError("give a token or a username and password, not both")
        return {"token": token}
    if username is None and password is None:
        return None
    if username is None or password is None:
        raise ValueError("a username needs a password, and a password a username")
    return {"username": username, "password": password}


def handshake_reply(events: Iterable[Any], number: int, backlog: list[Any]) -> Reply | None:
    """Find the reply to request ``number`` among events read before the connection is handed over.

    The other events are appended to ``backlog``, in order, for the reader.
    Raises ConnectionClosed on a BYE or a broken stream, and the error of an
    unnumbered ``ERROR:`` (the broker refusing the connection before closing it).
    """
    found = None
    for event in events:
        if found is None and isinstance(event, Reply) and event.request == number:
            found = event
        elif isinstance(event, Reply) and event.request is None and event.error is not None:
            raise error_for(event.error)
        elif isinstance(event, Bye):
            raise ConnectionClosed("the broker closed the connection (BYE) while logging in")
        elif isinstance(event, ProtocolError) and event.fatal:
            raise ConnectionClosed(f"protocol error from the broker: {event}")
        else:
            backlog.append(event)
    return found


def user_of(reply: Reply) -> str | None:
    """The user name of an ``OK: Authenticated`` reply; raise its error (AuthenticationFailed...) otherwise."""
    if reply.error is not None:
        raise error_for(reply.error, reply.request)
    user = reply.message.get("user")
    return user if isinstance(user, str) else None


def notify_connected(callback: ConnectCallback | None, welcome: dict) -> Any:
    """Call ``on_connect(welcome)``; log what it raises; return its result (maybe a coroutine)."""
    if callback is None:
        return None
    try:
        return callback(welcome)
    except Exception:
        logger.exception("on_connect callback failed")
        return None


# -- errors nobody waits for -------------------------------------------------

class ErrorReporter:
    """Keeps, logs and hands on errors that no caller is waiting for; never drops one.

    ``on_error`` runs in the client's reader (thread or task) and must not
    block; what it raises is logged. Its return value is handed back so the
    asyncio client can schedule a coroutine.
    """

    def __init__(self, on_error: ErrorCallback | None = None, *, keep: int = RECENT_ERRORS) -> None:
        self.on_error = on_error
        self.recent: deque[CoreMQError] = deque(maxlen=keep)
        #: Given what ``on_error`` returned (the asyncio client runs a coroutine as a task).
        self.on_result: Callable[[Any], Any] = _ignore

    def report(self, error: CoreMQError) -> Any:
        self.recent.append(error)
        logger.warning("CoreMQ error with no caller waiting: %s", error)
        if self.on_error is None:
            return None
        try:
            result = self.on_error(error)
        except Exception:
            logger.exception("on_error callback failed")
            return None
        self.on_result(result)
        return result


class GapReporter:
    """Keeps, logs and hands on :class:`~coremq_client.protocol.Gap` reports (``on_gap``).

    Like :class:`ErrorReporter`: the callback runs in the reader and must not
    block; what it raises is logged; its result is handed back.
    """

    def __init__(self, on_gap: GapCallback | None = None, *, keep: int = RECENT_ERRORS) -> None:
        self.on_gap = on_gap
        self.recent: deque[Gap] = deque(maxlen=keep)
        self.on_result: Callable[[Any], Any] = _ignore  # as ErrorReporter's

    def report(self, gap: Gap) -> Any:
        self.recent.append(gap)
        if gap.reset:
            logger.warning("queue %r restarted its numbering (a broker restart without durable history); "
                           "messages were lost%s", gap.queue,
                           "" if gap.first_missing is None else f", and ids {gap.first_missing}..{gap.last_missing}")
        else:
            logger.warning("queue %r: messages %s..%s were lost (no longer in history, or dropped with resume off)",
                           gap.queue, gap.first_missing, gap.last_missing)
        if self.on_gap is None:
            return None
        try:
            result = self.on_gap(gap)
        except Exception:
            logger.exception("on_gap callback failed")
            return None
        self.on_result(result)
        return result


def _ignore(result: Any) -> None:
    """What a callback returned, where nothing is to be done with it (the blocking client)."""
