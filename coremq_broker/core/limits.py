"""Bounds on what clients can make the broker hold: time, connections, queues, history bytes, reply size.

One :class:`Bounds` per broker, owned by the event loop like the registry; it
imports no Django. Each bound is a :class:`~coremq_broker.core.config.BrokerConfig`
field (``settings.COREMQ`` key in upper case) with its default there, and
counts what it did (:meth:`Bounds.describe`, shown on the status page and in
``/metrics``):

- ``FIRST_FRAME_TIMEOUT``, ``FRAME_TIMEOUT``: a TCP connection must send its
  first frame within so many seconds of the welcome, and finish a frame it
  started within so many seconds (:class:`FrameDeadline`); else it is closed
  with ``ERROR: timeout: ...``;
- ``MAX_CONNECTIONS_PER_ADDRESS``: anonymous connections from one client
  address (an IPv6 client's /64; a connection that logged in counts against
  ``MAX_CONNECTIONS_PER_USER`` instead); the next one is refused with
  ``ERROR: too many connections from <address>: limit is N``;
- ``MAX_QUEUES``: queues in all, a connection's own id queue not counted; at
  the limit the queues that hold nothing are forgotten at once, and if none
  is, a new queue is refused with ``ERROR: too many queues: limit is N``;
- ``MAX_HISTORY_BYTES``: bytes held in all queues' histories; past it the
  oldest messages of the least recently published queues are dropped until a
  quarter of the limit is free again;
- ``QUEUE_IDLE_TIMEOUT``: a queue with no subscribers, no history and default
  settings is forgotten after so many seconds;
- a history reply is never larger than ``MAX_FRAME_SIZE``
  (:func:`history_reply`): what does not fit is left for the next page, and
  the reply says so in ``more``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, Callable, Iterable

from coremq_client.errors import CoreMQError

from .access import ANONYMOUS, peer_address
from .config import BrokerConfig

if TYPE_CHECKING:
    from .registry import Connection, Queue, QueueSettings, Registry

__all__ = ["Bounds", "FrameDeadline", "LimitExceeded", "HISTORY_ENTRY_BYTES", "address_of", "history_reply",
           "keep_run", "recount"]

logger = logging.getLogger("coremq.broker")

#: What one kept message costs besides its JSON (the tuple, the bytes object's header, the id):
#: counted so that a history of many tiny messages is not taken for free.
HISTORY_ENTRY_BYTES = 128


class LimitExceeded(CoreMQError):
    """A bound refused a request; the text becomes the ``ERROR:`` reply."""


def address_of(peer: str) -> str:
    """What counts as one client address for a transport's ``host:port`` peer ("" for one without, like the bridge).

    As for the login throttle (:func:`~coremq_broker.core.access.peer_address`): an
    IPv4 address, or an IPv6 address's /64 network, which one client can hold whole.
    """
    host, colon, _ = peer.rpartition(":")
    return peer_address(host) if colon else ""


class Bounds:
    """The broker's bounds, the state they need, and what they counted."""

    def __init__(self, config: "BrokerConfig | None" = None, default_settings: "QueueSettings | None" = None) -> None:
        if config is None:
            config = BrokerConfig()
        self.first_frame_timeout = config.first_frame_timeout
        self.frame_timeout = config.frame_timeout
        self.max_connections_per_address = config.max_connections_per_address
        self.max_connections = config.max_connections
        self._registry: "Registry | None" = None
        self.max_queues = config.max_queues
        self.max_history_bytes = config.max_history_bytes
        self.queue_idle_timeout = config.queue_idle_timeout
        #: The settings of a queue that has no row of its own (only such queues are forgotten).
        self.default_settings = default_settings
        #: Bytes held in all histories (each queue's share is ``Queue.history_bytes``).
        self.history_bytes = 0
        self._by_address: dict[str, set["Connection"]] = {}
        self._empty_since: dict[str, tuple[float, int]] = {}  # queue -> (seen empty at, its published count)
        self._reclaimed = float("-inf")  # when a full registry last looked for queues to forget
        self._sweeper: asyncio.TimerHandle | None = None
        # What the bounds did, for the status page.
        self.timeouts = 0
        self.refused_per_address = 0
        self.queues_refused = 0
        self.queues_forgotten = 0
        self.history_evicted = 0
        self.history_pages = 0
        self.history_skipped = 0

    def describe(self) -> dict[str, Any]:
        return {
            "history_bytes": self.history_bytes,
            "history_bytes_limit": self.max_history_bytes,
            "history_evicted": self.history_evicted,
            "history_pages": self.history_pages,
            "history_skipped": self.history_skipped,
            "queues_limit": self.max_queues,
            "queues_refused": self.queues_refused,
            "queues_forgotten": self.queues_forgotten,
            "timeouts": self.timeouts,
            "refused_per_address": self.refused_per_address,
        }

    # -- connections per address ---------------------------------------------

    def admit(self, connection: "Connection") -> str | None:
        """Count ``connection`` against its address; the refusal's text if it is one too many, else None.

        Only anonymous connections count towards the limit: one that logged in
        is bounded by ``MAX_CONNECTIONS_PER_USER``. Transports without an
        address (the in-process bridge) are not bounded here.
        """
        address = address_of(connection.peer)
        limit = self.max_connections_per_address
        if not address or not limit:
            return None
        group = self._by_address.get(address)
        if group is None:
            group = self._by_address[address] = set()
        elif len(group) >= limit and sum(1 for other in group if other.principal is ANONYMOUS) >= limit:
            self.refused_per_address += 1
            return f"too many connections from {address}: limit is {limit}"
        group.add(connection)
        return None

    def release(self, connection: "Connection") -> None:
        """Forget a closed connection (refused ones were never counted)."""
        address = address_of(connection.peer)
        group = self._by_address.get(address)
        if group is not None:
            group.discard(connection)
            if not group:
                del self._by_address[address]

    def connections_scarce(self, connection: "Connection") -> bool:
        """True when connections are scarce enough that a silent one must give its place back.

        That is when ``connection``'s address holds at least half of
        ``MAX_CONNECTIONS_PER_ADDRESS``, or the broker at least half of
        ``MAX_CONNECTIONS``. Until then a client that connects early and sends
        its first frame much later (as 2015 clients may) keeps its connection.
        """
        limit = self.max_connections_per_address
        if limit:
            group = self._by_address.get(address_of(connection.peer))
            if group is not None and 2 * len(group) >= limit:
                return True
        registry = self._registry
        return registry is not None and 2 * len(registry.connections) >= self.max_connections

    # -- queues ----------------------------------------------------------------

    def admit_queue(self, registry: "Registry", count: int = 1) -> None:
        """Make room for ``count`` more queues or raise :class:`LimitExceeded`."""
        limit = self.max_queues
        if not limit or count <= 0 or len(registry.queues) - len(registry.connections) + count <= limit:
            return
        now = time.monotonic()
        if now - self._reclaimed >= 1.0:  # a full registry is searched at most once a second
            self._reclaimed = now
            self.forget_idle(registry, idle=0.0)
            if len(registry.queues) - len(registry.connections) + count <= limit:
                return
        self.queues_refused += 1  # the broker logs the refusal with its ERROR reply
        raise LimitExceeded(f"too many queues: limit is {limit}")

    def forgettable(self, queue: "Queue") -> bool:
        """True for a queue that holds nothing: no subscriber, no history, no settings of its own."""
        return (queue.owner is None and not queue.subscribers and not queue.history and not queue.pending
                and (self.default_settings is None or queue.settings == self.default_settings))

    def forget_idle(self, registry: "Registry", idle: float | None = None) -> int:
        """Forget the queues that have held nothing for ``idle`` seconds (``QUEUE_IDLE_TIMEOUT``); how many."""
        idle = self.queue_idle_timeout if idle is None else idle
        now = time.monotonic()
        seen, self._empty_since = self._empty_since, {}
        forgotten = []
        for name, queue in registry.queues.items():
            if not self.forgettable(queue):
                continue
            since, published = seen.get(name, (now, queue.published))
            if published != queue.published:  # published to (and emptied) meanwhile
                since = now
            if now - since >= idle:
                forgotten.append(name)
            else:
                self._empty_since[name] = (since, queue.published)
        for name in forgotten:
            del registry.queues[name]
        if forgotten:
            self.queues_forgotten += len(forgotten)
            logger.info("forgot %d queue(s) that held nothing", len(forgotten))
        return len(forgotten)

    def start(self, loop: asyncio.AbstractEventLoop, registry: "Registry") -> None:
        """Look for idle queues to forget every half ``QUEUE_IDLE_TIMEOUT`` (at most every minute)."""
        self._registry = registry
        interval = max(0.05, min(60.0, self.queue_idle_timeout / 2))

        def sweep() -> None:
            self.forget_idle(registry)
            self._sweeper = loop.call_later(interval, sweep)

        self._sweeper = loop.call_later(interval, sweep)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # -- history bytes ---------------------------------------------------------

    def held(self, registry: "Registry", queue: "Queue", size: int) -> None:
        """``queue``'s history grew by ``size`` bytes (or shrank, if negative); trim all if over the limit."""
        queue.history_bytes += size
        self.history_bytes += size
        if self.history_bytes > self.max_history_bytes:
            self.trim_history(registry)

    def forget_history(self, queue: "Queue") -> None:
        """``queue`` left the registry with its history."""
        self.history_bytes -= queue.history_bytes
        queue.history_bytes = 0

    def trim_history(self, registry: "Registry") -> None:
        """Drop the oldest messages of the least recently published queues until a quarter of the limit is free."""
        target = self.max_history_bytes * 3 // 4
        before = self.history_evicted
        for queue in sorted((q for q in registry.queues.values() if q.history),
                            key=lambda q: q.last_publish or 0.0):
            history = queue.history
            while history and self.history_bytes > target:
                size = len(history.popleft()[1]) + HISTORY_ENTRY_BYTES
                queue.history_bytes -= size
                self.history_bytes -= size
                self.history_evicted += 1
            if self.history_bytes <= target:
                break
        logger.warning("history over MAX_HISTORY_BYTES (%d): dropped the %d oldest message(s) of the least "
                       "recently published queues", self.max_history_bytes, self.history_evicted - before)


def keep_run(bounds: Bounds, registry: "Registry", queue: "Queue", first_id: int, bodies: list[bytes],
             stamps: bytes) -> None:
    """Append a run of messages as sent, numbered from ``first_id``, that share their ``stamps``; count their bytes."""
    history = queue.history
    maxlen = history.maxlen
    count = len(bodies)
    if count == 1 and maxlen:  # one message: the deque drops its oldest entry when full
        size = len(bodies[0]) + HISTORY_ENTRY_BYTES
        if len(history) == maxlen:
            size -= len(history[0][1]) + HISTORY_ENTRY_BYTES
        history.append((first_id, bodies[0], stamps))
        if size:  # as Bounds.held, spelled out: this runs once per message in flight
            queue.history_bytes += size
            bounds.history_bytes += size
            if bounds.history_bytes > bounds.max_history_bytes:
                bounds.trim_history(registry)
        return
    if maxlen is not None:
        if not maxlen:
            return
        if count > maxlen:  # only the newest ones stay
            first_id += count - maxlen
            bodies = bodies[count - maxlen:]
            count = maxlen
    size = sum(map(len, bodies)) + HISTORY_ENTRY_BYTES * count
    dropped = len(history) + count - maxlen if maxlen is not None else 0
    if dropped > 0:
        dropped = min(dropped, len(history))
        size -= sum([len(entry[1]) for entry in islice(history, dropped)]) + HISTORY_ENTRY_BYTES * dropped
    history.extend(zip(range(first_id, first_id + count), bodies, repeat(stamps)))
    bounds.held(registry, queue, size)


def recount(bounds: Bounds, queue: "Queue") -> None:
    """Count ``queue``'s history afresh (after a change of its length, a purge or a restore)."""
    size = sum([len(entry[1]) for entry in queue.history]) + HISTORY_ENTRY_BYTES * len(queue.history)
    bounds.history_bytes += size - queue.history_bytes
    queue.history_bytes = size


# -- deadlines -----------------------------------------------------------------------


class FrameDeadline:
    """The input deadlines of one TCP connection: its first frame, then each frame it starts.

    The transport calls :meth:`read` after a read with whether its parser is
    left inside a frame and whether the read completed any; it may skip the
    call when the read ended on a frame's end and :attr:`active` is false. One
    timer at a time, re-armed from its own callback: the per-read cost is a few
    assignments, not a timer.
    """

    __slots__ = ("bounds", "connection", "loop", "active", "_timer", "_started", "_first", "_armed")

    def __init__(self, bounds: Bounds, connection: "Connection", loop: asyncio.AbstractEventLoop) -> None:
        self.bounds = bounds
        self.connection = connection
        self.loop = loop
        self._first = True  # no frame yet: the welcome's deadline runs
        self._started: float | None = loop.time()  # since when the deadline runs (None: between frames)
        #: False between frames once the first came: a read that ends on a frame's end needs no call.
        self.active = True
        self._timer: asyncio.TimerHandle | None = None
        self._arm(bounds.first_frame_timeout)

    def read(self, mid_frame: bool, progressed: Any) -> None:
        """After a read: ``mid_frame`` if input ends inside a frame, ``progressed`` if any frame completed."""
        if self._first and (progressed or mid_frame):
            # The welcome's deadline is met; frames have their own. A first frame still under way
            # runs on the frame deadline from now, scarce connections or not.
            self._first = False
            self.cancel()
            if not progressed:
                self._started = None
        if mid_frame:
            if progressed or self._started is None:
                self._started = self.loop.time()
            if self._timer is None:
                self._arm(self.bounds.frame_timeout)
        elif not self._first:
            self._started = None  # between frames: no deadline (a lapsing timer finds nothing to do)
        self.active = self._first or self._started is not None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float) -> None:
        self._armed = self.loop.time()
        self._timer = self.loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer = None
        connection = self.connection
        if connection.closing or self._started is None:
            return
        if self._first:
            timeout = self.bounds.first_frame_timeout
            reason = f"timeout: no frame within {timeout:g} seconds of the welcome"
        else:
            timeout = self.bounds.frame_timeout
            reason = f"timeout: frame not completed within {timeout:g} seconds"
        now = self.loop.time()
        if getattr(connection, "_holds", 0):
            # While the broker does not read the connection (flow control, a login being checked)
            # the peer cannot finish: its clock waits. The time since the timer was armed does not
            # count (it may include a little before the hold began: in the peer's favour).
            self._started += now - self._armed
            self._arm(timeout / 10)
            return
        left = self._started + timeout - now
        if left > 0:
            self._arm(left)
            return
        if self._first and not self.bounds.connections_scarce(connection):
            self._arm(timeout)  # a silent client keeps its place while nobody needs it: look again later
            return
        self.bounds.timeouts += 1
        logger.warning("connection %s (%s): %s; closing", connection.id, connection.peer, reason)
        connection.close(reason)


# -- history replies ---------------------------------------------------------------


def history_reply(asked: Iterable[tuple[str, "Queue | None", int | None]], *, limit: int | None, room: int,
                  request: int, dumps: Callable[[Any], bytes], splice: Callable[[bytes, bytes, int], bytes],
                  bounds: Bounds | None = None,
                  history: Callable[["Queue"], Iterable[tuple[int, bytes, bytes]]] | None = None) -> bytes:
    """The JSON of a history reply to request number ``request`` that is at most ``room`` bytes long.

    ``asked`` gives each queue's name, the queue (None if unknown) and the id
    after which to start (None: from the oldest kept). Per queue the messages
    come oldest first, at most ``limit`` of them; they are the stored JSON,
    spliced into the reply, not decoded and encoded again. Whatever does not
    fit is left out and the queue is named in ``more``: its client asks again
    from the last id it got. ``history(queue)`` gives a queue's kept
    ``(id, body, stamps)`` entries, oldest first (the engine's; by default
    ``queue.history``). A message too large for any reply is left out
    (the client sees its id missing) and counted. Raises
    :class:`LimitExceeded` if even an empty reply for these queues does not fit.
    """
    asked = list(asked)
    names = [dumps(name) for name, _, _ in asked]
    sequence = dumps({name: queue.sequence() if queue is not None
                      else {"first": None, "last": 0} for name, queue, _ in asked})
    tail = b',"request":%d}' % request
    # The empty reply, with room kept for naming every queue in "more".
    fixed = (len(b'{"history":{},"sequence":') + len(sequence) + len(tail) + len(b',"more":')
             + len(dumps({name: True for name, _, _ in asked})) + sum(len(name) + 4 for name in names))
    free = room - fixed
    if free < 0:
        raise LimitExceeded(f"a history reply for {len(asked)} queues does not fit in a frame "
                            f"({fixed} bytes, limit is {room}): ask for fewer queues")
    largest = free  # what one message may take in a reply that holds nothing else
    parts = []
    more: dict[str, bool] = {}
    for (name, queue, since), name_json in zip(asked, names):
        messages: list[bytes] = []
        if queue is not None:
            for message_id, body, stamps in (queue.history if history is None else history(queue)):
                if since is not None and message_id <= since:
                    continue
                if limit is not None and len(messages) >= limit:
                    more[name] = True
                    break
                data = splice(body, stamps, message_id)
                if len(data) + 1 > largest:
                    if bounds is not None:
                        bounds.history_skipped += 1
                    continue
                if len(data) + 1 > free:
                    more[name] = True
                    break
                free -= len(data) + 1
                messages.append(data)
        parts.append(b"%s:[%s]" % (name_json, b",".join(messages)))
    if more and bounds is not None:
        bounds.history_pages += 1
    body = b'{"history":{%s},"sequence":%s' % (b",".join(parts), sequence)
    if more:
        body += b',"more":' + dumps(more)
    return body + tail
