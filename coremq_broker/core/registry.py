"""The broker's live registry: connections, queues, subscriptions and history.

A plain object owned by the event loop: nothing here awaits, locks or imports
Django. The status page, the metrics and the WebSocket bridge read it in the
broker's process; other processes ask for it with a status request.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterator

from coremq_client.codec import split_address

from .access import ANONYMOUS, Principal, is_connection_address
from .limits import Bounds, recount
from .wire import stamped

if TYPE_CHECKING:
    from .config import BrokerConfig

__all__ = ["Connection", "Queue", "Registry", "QueueSettings", "RateCounter"]


class RateCounter:
    """Events per second over the last ``window`` seconds, in one-second buckets.

    ``add`` is cheap enough for the per-publish path: an int() and a compare.
    """

    __slots__ = ("window", "_buckets", "_second")

    def __init__(self, window: int = 60) -> None:
        self.window = window
        self._buckets: deque[int] = deque([0] * window, maxlen=window)
        self._second = int(time.time())

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        if second != self._second:
            self._advance(second)
        self._buckets[-1] += count

    def _advance(self, second: int) -> None:
        gap = min(second - self._second, self.window)
        if gap > 0:
            self._buckets.extend([0] * gap)
        self._second = second

    def series(self, now: float | None = None) -> list[int]:
        """Counts for each of the last ``window`` whole seconds, oldest first."""
        self._advance(int(time.time() if now is None else now))
        return list(self._buckets)[:-1]

    def rate(self, now: float | None = None) -> float:
        """Average events per second over the last window (the current second excluded)."""
        return sum(self.series(now)) / (self.window - 1)


class QueueSettings:
    """How one queue behaves. Queues without their own row use the defaults.

    ``slow_consumer_policy`` names what happens when a subscriber's output
    buffer overflows: ``"disconnect"`` cuts it off with ``ERROR: slow
    consumer``; ``"drop"`` drops its oldest undelivered messages and tells it
    which ids it missed.
    """

    __slots__ = ("history_length", "max_message_size", "slow_consumer_policy", "durable")

    def __init__(self, history_length: int, max_message_size: int | None = None,
                 slow_consumer_policy: str = "disconnect", durable: bool = False) -> None:
        self.history_length = history_length
        self.max_message_size = max_message_size
        self.slow_consumer_policy = slow_consumer_policy
        self.durable = durable

    @classmethod
    def from_config(cls, config: "BrokerConfig") -> "QueueSettings":
        """The settings of a queue that nothing more specific covers: the broker configuration's."""
        return cls(config.history_length, slow_consumer_policy=config.slow_consumer_policy)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QueueSettings) and all(
            getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"QueueSettings({values})"


class Connection:
    """One client's state, whatever its transport.

    Transports subclass it and implement :meth:`send`, which must only append
    to a buffer: it runs once per subscriber per delivered message.
    """

    transport_name = "local"

    def __init__(self, connection_id: str, peer: str = "") -> None:
        self.id = connection_id
        self.id_bytes = connection_id.encode()
        self.id_length = len(self.id_bytes) + 1  # the id and the space of a frame's payload
        self.peer = peer
        self.principal: Principal = ANONYMOUS
        #: While a login is being checked, the frames that came after it wait here.
        self.authenticating = False
        self.held_frames: list[Any] = []
        #: The access policy's answers to "may this connection publish to queue q",
        #: kept until the policy or the connection's user changes.
        self.publish_grants: dict[str, bool] = {}
        self.publish_limit = 0  # publishes per second; 0: no limit
        self._publish_tokens = 0.0  # a token bucket of publish_limit, full at the first publish
        self._publish_refilled = 0.0
        self.connected_since = time.time()
        self.subscriptions: set[str] = set()
        self.options: dict[str, Any] = {}
        self.echo = False
        self.replies = True
        self.requests = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.delivery_errors = 0  # deliveries or flushes to it that raised (see Broker._flush_dirty)
        self.closing = False

    def send(self, data: bytes) -> None:  # pragma: no cover - interface
        """Queue ``data``, one or more whole frames, for the peer; only appends to a buffer."""
        raise NotImplementedError

    def deliver(self, data: bytes, queue: str, first_id: int, last_id: int) -> bool:
        """Like :meth:`send`, for the broker's fan-out at the end of a loop iteration.

        ``data`` is whole frames of messages of ``queue``, ids ``first_id`` to
        ``last_id`` (a subscriber that published some of them without echo
        gets the others), so that the transport never reads them back. A
        transport may write ``data`` at once here when nothing else waits to
        be sent, which saves buffering it until the flush that follows. It
        returns True while the connection is congested (flow control: the
        broker then holds the publishers of ``data`` with :meth:`hold_publisher`).
        """
        self.send(data)
        return False

    def may_publish(self) -> bool:
        """Count a publish against ``publish_limit`` per second; False when over it.

        A token bucket: bursts of up to ``publish_limit``, refilled at that rate,
        so no window boundary lets twice the limit through.
        """
        now = time.monotonic()
        limit = self.publish_limit
        tokens = min(limit, self._publish_tokens + (now - self._publish_refilled) * limit)
        self._publish_refilled = now
        if tokens >= 1:
            self._publish_tokens = tokens - 1
            return True
        self._publish_tokens = tokens
        return False

    def hold(self) -> None:
        """Stop taking requests from the peer until :meth:`release` (nestable)."""

    def release(self) -> None:
        """Undo one :meth:`hold`."""

    def hold_publisher(self, publisher: "Connection", queue: str) -> None:
        """Flow control: hold ``publisher`` (of ``queue``) until this congested connection drains."""

    def turn_over(self) -> None:
        """The broker wrote this loop turn's output (a transport that held reading for its budget reads again)."""

    def shutdown(self) -> None:
        """Close gracefully on the broker's shutdown, after its BYE was sent."""
        self.close()

    def flush(self) -> None:
        """Hand what :meth:`send` buffered to the transport (called once per loop turn)."""

    def close(self, reason: str | None = None) -> None:  # pragma: no cover - interface
        """Close the connection, telling the peer ``ERROR: reason`` first if given."""
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent output."""
        self.close()

    @property
    def buffered(self) -> int:
        """Bytes waiting to be sent to the peer."""
        return 0

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "transport": self.transport_name,
            "peer": self.peer,
            "user": self.principal.username,
            "connected_since": self.connected_since,
            "subscriptions": sorted(self.subscriptions),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "buffered": self.buffered,
            "dropped": self.dropped,
        }


class Queue:
    """A named queue: its subscribers and the ring of its latest messages.

    ``history`` holds ``(id, body, stamps)`` entries, the message as published and
    the stamps of its batch (:func:`~coremq_broker.core.wire.stamped` gives its
    stored JSON); ids start at 1 and only increase. A private queue (a connection's id queue) has an ``owner``: no
    other connection may subscribe to it or read its history.
    """

    __slots__ = ("name", "name_bytes", "owner", "subscribers", "history", "last_id",
                 "published", "last_publish", "settings", "plain", "rate", "pending", "history_bytes")

    def __init__(self, name: str, settings: QueueSettings, owner: str | None = None) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.owner = owner
        self.settings = settings
        self.plain = settings.max_message_size is None and not settings.durable
        self.subscribers: dict[Connection, None] = {}  # insertion-ordered set
        # (id, JSON as published, the stamps of its batch): see wire.stamped.
        self.history: deque[tuple[int, bytes, bytes]] = deque(maxlen=settings.history_length)
        self.last_id = 0
        self.published = 0
        self.last_publish: float | None = None
        self.rate = RateCounter()
        # Frames published in this loop iteration, fanned out together at its end (pipeline.Pending).
        self.pending: list[tuple[bytes, int, Connection | None, Connection | None, int]] = []
        self.history_bytes = 0  # what its history holds, as counted by limits.Bounds

    def apply_settings(self, settings: QueueSettings) -> None:
        """Take new settings; a shorter history keeps the newest messages."""
        if settings.history_length != self.history.maxlen:
            self.history = deque(self.history, maxlen=settings.history_length)
        self.settings = settings
        #: No per-queue size limit and not durable: the publish fast path applies.
        self.plain = settings.max_message_size is None and not settings.durable

    def history_since(self, since: int | None) -> list[bytes]:
        """The JSON of the stored messages with an id above ``since`` (all of them when None)."""
        return [stamped(body, stamps, message_id)
                for message_id, body, stamps in self.history if since is None or message_id > since]

    @property
    def first_id(self) -> int | None:
        return self.history[0][0] if self.history else None

    @property
    def last_stored_id(self) -> int:
        """The id of the newest message kept: ``last_id`` less durable writes still in flight."""
        return self.history[-1][0] if self.history else self.last_id

    def sequence(self) -> dict[str, Any]:
        """The queue's entry in a history reply's ``sequence``: ``first`` id in history, ``last`` id stored,
        and ``continued: true`` when its ids go on from an earlier run of the broker (restored durable
        history), so that a client's ids of before a restart still compare with the new ones."""
        entry: dict[str, Any] = {"first": self.first_id, "last": self.last_stored_id}
        if self.last_stored_id > self.published:  # its numbering did not start at 1 in this run
            entry["continued"] = True
        return entry

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "private": self.owner is not None,
            "subscribers": len(self.subscribers),
            "history": len(self.history),
            "history_capacity": self.history.maxlen,
            "history_bytes": self.history_bytes,
            "last_id": self.last_id,
            "published": self.published,
            "last_publish": self.last_publish,
            "rate": self.rate.rate(),
        }


class Registry:
    """Every live connection and queue of one broker."""

    def __init__(self, queue_settings: Callable[[str], QueueSettings], bounds: Bounds | None = None) -> None:
        self.queue_settings = queue_settings
        #: The bounds on queues and history bytes (coremq_broker/core/limits.py).
        self.bounds = bounds if bounds is not None else Bounds()
        self.connections: dict[str, Connection] = {}
        self.queues: dict[str, Queue] = {}
        self.started = time.time()
        self.connections_total = 0
        self.messages_in = 0
        self.messages_out = 0
        self.errors = 0
        self.denials = 0
        self.slow_consumers = 0
        #: Deliveries and flushes that raised: logged and skipped, the others went on.
        self.delivery_errors = 0
        #: Point-to-point messages dropped because their connection is closed.
        self.dead_letters = 0
        self.rate_in = RateCounter()
        self.rate_out = RateCounter()

    def add(self, connection: Connection) -> None:
        """Register a connection and subscribe it to its private id queue."""
        self.connections[connection.id] = connection
        self.connections_total += 1
        self.queue(connection.id)

    def remove(self, connection: Connection) -> None:
        """Forget a connection, its subscriptions and its private queues."""
        if self.connections.pop(connection.id, None) is None:
            return
        for name in connection.subscriptions:
            queue = self.queues.get(name)
            if queue is not None:
                if queue.owner == connection.id:
                    del self.queues[name]
                    self.bounds.forget_history(queue)
                else:
                    queue.subscribers.pop(connection, None)
        connection.subscriptions.clear()

    def owner_of(self, name: str) -> str | None:
        """The id of the live connection that a queue name is private to, if any.

        A connection owns its id queue and every sub-address ``<id>/<anything>``
        (a bridge gives each of its browsers one); they reach it alone.
        """
        prefix = split_address(name)[0]
        return prefix if prefix in self.connections else None

    def is_closed_address(self, name: str) -> bool:
        """True when ``name`` addresses a connection (its id, or a sub-address of it) that is not open.

        Such a name is refused as a subscription or history target and what is
        published to it is dropped: ids are not secret, so a newcomer must not
        be able to take over a closed connection's messages. Any name of the
        form the broker gives ids (:func:`~coremq_broker.core.access.is_connection_address`)
        is an address, so no list of closed ids is kept, which clients could
        grow without bound.
        """
        return split_address(name)[0] not in self.connections and is_connection_address(name)

    def queue(self, name: str) -> Queue:
        """The queue called ``name``, created on first use.

        A new sub-address queue is private to its owner and delivers to it.
        """
        queue = self.queues.get(name)
        if queue is None:
            owner = self.owner_of(name)
            if owner != name:  # a connection's id queue is bounded by MAX_CONNECTIONS
                self.bounds.admit_queue(self)
            queue = self.queues[name] = Queue(name, self.queue_settings(name), owner=owner)
            if owner is not None:
                self.subscribe(self.connections[owner], name)
        return queue

    def subscribe(self, connection: Connection, name: str) -> None:
        self.queue(name).subscribers[connection] = None
        connection.subscriptions.add(name)

    def unsubscribe(self, connection: Connection, name: str) -> None:
        """End a subscription; a connection's own private queues stay its own until it closes."""
        queue = self.queues.get(name)
        if queue is not None:
            if queue.owner == connection.id:
                return
            queue.subscribers.pop(connection, None)
        connection.subscriptions.discard(name)

    def reload_settings(self, queue_settings: Callable[[str], QueueSettings] | None = None) -> None:
        """Re-resolve every queue's settings, with a new resolver if given (an admin saved a change)."""
        if queue_settings is not None:
            self.queue_settings = queue_settings
        for queue in self.queues.values():
            queue.apply_settings(self.queue_settings(queue.name))
            recount(self.bounds, queue)

    def public_queues(self) -> Iterator[Queue]:
        return (queue for queue in self.queues.values() if queue.owner is None)

    def describe(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "uptime": time.time() - self.started,
            "connections": len(self.connections),
            "connections_total": self.connections_total,
            "queues": sum(1 for _ in self.public_queues()),
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "errors": self.errors,
            "denials": self.denials,
            "slow_consumers": self.slow_consumers,
            "delivery_errors": self.delivery_errors,
            **self.bounds.describe(),
            "dead_letters": self.dead_letters,
            "rate_in": self.rate_in.rate(),
            "rate_out": self.rate_out.rate(),
            "rss_bytes": resident_memory(),
            "open_fds": open_file_descriptors(),
        }


def resident_memory() -> int | None:
    """This process's resident set size in bytes (Linux), else None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def open_file_descriptors() -> int | None:
    """How many file descriptors this process holds open (Linux), else None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
