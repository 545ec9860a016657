"""The publish pipeline: validate once at the door, number and keep (the engine), fan out once per loop turn.

:meth:`Pipeline.handle_frames` takes the frames of one read. Each body is
decoded once, to validate it against everything that may carry it later.
Consecutive *plain* publishes to one queue (a non-empty JSON object ending in
its brace, with no stamp of its own, to a queue with no size limit that is not
durable) form a batch that is not re-encoded: the stamps go in before each
brace (:mod:`~coremq_broker.core.wire`). Every other publish is a batch of
one, re-encoded if it must be; control requests go to
:class:`~coremq_broker.core.control.Control`. Answers keep the order of the
requests.

Every batch goes to the engine (:mod:`~coremq_broker.core.engine`), which
numbers and keeps it and hands it back to :meth:`Pipeline.numbered`: its
delivery frames are formatted once and queued on the queue; at the end of the
loop turn :meth:`Pipeline.fan_out` hands each queue's frames of the turn to
each subscriber in one append (or a few of at most ``MAX_FANOUT_BLOB``
bytes), and holds the publishers of congested subscribers (flow control).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from coremq_client import protocol as P
from coremq_client.codec import NESTING_CHECK_FROM, check_nesting, shown, validate_queue_name
from coremq_client.errors import InvalidQueueName, MessageError

from .control import RequestError
from .engine import Batch
from .limits import LimitExceeded
from .wire import split_frames

if TYPE_CHECKING:
    from .broker import Broker
    from .registry import Connection, Queue

__all__ = ["Pipeline", "Pending"]

logger = logging.getLogger("coremq.broker")

#: A queue's frames of this loop turn: (frames, how many, the subscriber that must not get them:
#: their sender or None, their sender, the first id).
Pending = tuple[bytes, int, "Connection | None", "Connection | None", int]


class Pipeline:
    """The broker's publish path; one per broker, on its loop. Implements the engine's ``Node``."""

    def __init__(self, broker: "Broker") -> None:
        self.broker = broker
        self.registry = broker.registry
        self.wire = broker.wire
        self.engine = broker.engine
        self.config = broker.config
        self._loads = broker.codec.raw_loads
        # Stamps are spliced into what the decoder took only if that is strict UTF-8 JSON.
        self._splice = broker.codec.strict
        self._durable_all = broker.config.durable_all
        self._max_blob = broker.config.max_fanout_blob
        self._dirty_queues: list["Queue"] = []
        #: Set by the broker: have :meth:`fan_out` run at the end of this loop turn.
        self.schedule: Callable[[], None] = lambda: None

    # -- the door ------------------------------------------------------------------

    def handle_frames(self, connection: "Connection", frames: list[tuple[str, bytes]]) -> None:
        """Carry out the frames of one read from ``connection`` in order; never raises for bad input.

        Per message the loop only decodes (to validate) and collects runs of
        plain publishes to one queue; anything else ends the run first, so
        answers keep the order of the requests.
        """
        registry = self.registry
        loads = self._loads
        stamp_keys = P.STAMP_KEYS
        registry.messages_in += len(frames)
        connection.messages_in += len(frames)
        requests = connection.requests  # frame i of this read is request requests + i + 1
        now = time.time()  # the messages of one read arrived together
        stamps = self.wire.connection_stamps(connection.id_bytes, now)
        run_name: str | None = None  # the queue of the current run (None: no run)
        run_queue: "Queue | None" = None
        run_first = 0  # the index in frames of the run's first message
        bodies: list[bytes] = []
        replies: list[bytes] = []  # answers to runs, sent before anything else is
        for index, (name, body) in enumerate(frames):
            if connection.authenticating:  # what follows a login waits for its answer
                self._hold(connection, frames[index:])
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
                self.publish(Batch(run_queue, bodies, stamps, connection, requests + run_first + 1, now, replies))
                run_name = run_queue = None
            connection.requests = requests + index + 1
            if plain and (queue := self._plain_queue(connection, name)) is not None:
                run_name, run_queue, run_first, bodies = name, queue, index, [body]
                continue
            if replies:
                connection.send(b"".join(replies))
                replies = []
            self._handle_other(connection, name, body, message, stamps if plain else None, now)
            if connection.closing:  # a request closed it (an administrator's disconnect of itself)
                return
        else:
            index = len(frames)
        if run_queue is not None:
            self.publish(Batch(run_queue, bodies, stamps, connection, requests + run_first + 1, now, replies))
        if replies:
            connection.send(b"".join(replies))
        connection.requests = requests + index

    def _hold(self, connection: "Connection", frames: list[tuple[str, bytes]]) -> None:
        """Keep ``frames`` until the login being checked is answered (they are counted when carried out)."""
        connection.held_frames.extend(frames)
        self.registry.messages_in -= len(frames)
        connection.messages_in -= len(frames)

    def _plain_queue(self, connection: "Connection", name: str) -> "Queue | None":
        """The queue named ``name`` if a plain publish to it may join a run; else None."""
        queue = self.registry.queues.get(name)
        if (queue is None or not queue.plain or name == connection.id or self._durable_all
                or connection.publish_limit or not self._splice):
            return None
        if not self.broker.open_access and queue.owner != connection.id and not connection.publish_grants.get(name):
            return None  # denied, or not asked yet: the general path asks the policy (and remembers)
        return queue

    def _handle_other(self, connection: "Connection", name: str, body: bytes, message: Any,
                      stamps: bytes | None, now: float) -> None:
        """Every frame that is not part of a run: control requests, other publishes, errors."""
        try:
            if isinstance(message, MessageError):
                raise message
            if name == connection.id and isinstance(message, dict) and _is_control(message):
                self.broker.control.handle(connection, message)
            else:
                self._publish_one(connection, name, message, body, stamps, now)
        except (RequestError, InvalidQueueName, MessageError, LimitExceeded) as exc:
            self.registry.errors += 1
            logger.warning("connection %s (%s): %s", connection.id, connection.peer, exc)
            self.broker.refuse(connection, str(exc), connection.requests, queue=name)

    # -- publishing ----------------------------------------------------------------

    def _publish_one(self, connection: "Connection", name: str, message: Any, body: bytes,
                     stamps: bytes | None, now: float) -> None:
        """A publish that joins no run: a batch of one, re-encoded unless it is plain (``stamps`` given)."""
        if connection.publish_limit and not connection.may_publish():
            raise RequestError(f"publish rate limit exceeded: {connection.publish_limit} per second")
        if not isinstance(message, (dict, str, list)):
            raise MessageError(f"a message must be a JSON object, array or string, not {_json_type(message)}")
        queue = self._target(connection, name)
        limit = queue.settings.max_message_size
        if limit is not None and len(body) > limit:
            raise RequestError(f"message too large: {len(body)} bytes, limit for queue {shown(name)} is {limit}")
        if stamps is None or not self._splice:
            body, stamps = self._encoded(P.wrap(message) if not isinstance(message, dict) else message,
                                         connection, now)
        self.publish(Batch(queue, [body], stamps, connection, connection.requests, now))

    def _encoded(self, stored: dict, sender: "Connection | None", now: float) -> tuple[bytes, bytes]:
        """``stored`` without stamps of its own, as JSON, and the stamps of its batch of one.

        A connection may speak as one of its own sub-addresses (a bridge for
        its browsers); any other claimed sender is replaced.
        """
        claimed = stored.get(P.SENDER)
        if sender is None:
            speaker = self.config.server_name
        elif isinstance(claimed, str) and claimed.startswith(sender.id + "/"):
            speaker = claimed
        else:
            speaker = sender.id
        body = self.wire.dumps({key: value for key, value in stored.items() if key not in P.STAMP_KEYS})
        stamps = self.wire.stamps(speaker, now)
        return body, stamps[1:] if body == b"{}" else stamps  # nothing before the stamps: no comma

    def _target(self, connection: "Connection", name: str) -> "Queue":
        """The queue a publish from ``connection`` goes to; raise when it may not (or the name is bad)."""
        registry = self.registry
        queue = registry.queues.get(name)
        if queue is None:
            validate_queue_name(name, self.config.max_queue_name_length)
            elsewhere = getattr(self.broker.engine, "may_hold", None)  # another node may hold the connection
            if registry.is_closed_address(name) and not (elsewhere is not None and elsewhere(name)):
                # A closed connection's id never becomes a public queue: what is sent there is lost.
                registry.dead_letters += 1
                raise RequestError(f"no such connection: message to {shown(name)} dropped")
            if registry.owner_of(name) != connection.id:
                self.broker.check(connection, "publish", name)
            return registry.queue(name)
        if not self.broker.open_access and queue.owner != connection.id:
            # Point-to-point sending follows the publish rules too; one's own queues are one's own.
            self.broker.check_publish(connection, name)
        return queue

    def deliver(self, queue: "Queue", stored: dict, sender: "Connection | None" = None) -> None:
        """Publish ``stored`` to ``queue`` from ``sender`` (None: the server itself), unacknowledged."""
        now = time.time()
        body, stamps = self._encoded(stored, sender, now)
        self.publish(Batch(queue, [body], stamps, sender, 0, now))

    def publish(self, batch: Batch) -> None:
        """Hand ``batch`` to the engine; acknowledgements that come later are sent as they come."""
        batch.queue.last_publish = batch.now  # before the engine keeps it: a trim takes this queue as the newest
        self.engine.publish(batch)
        batch.replies = None

    # -- the engine's Node -------------------------------------------------------------

    def numbered(self, batch: Batch, first_id: int) -> None:
        """``batch`` has ids from ``first_id`` and is kept: format its deliveries once; acknowledge it."""
        queue = batch.queue
        count = len(batch.bodies)
        queue.published += count
        if queue.subscribers:
            blob = self.wire.deliveries(queue.name_bytes, batch.bodies, batch.stamps, first_id)
            self._pend(queue, blob, count, batch.sender, first_id)
        else:
            queue.rate.add(batch.now, count)  # with subscribers, counted per turn at the fan-out
        sender = batch.sender
        if sender is not None and sender.replies and batch.first_request:
            acks = self.wire.acknowledgements(sender.id_bytes, first_id, count, batch.first_request)
            if batch.replies is not None:
                batch.replies.append(acks)
            elif not sender.closing:
                sender.send(acks)

    def refused(self, batch: Batch, reason: str) -> None:
        """``batch`` is not kept: each message's publisher gets ``ERROR: reason``."""
        sender = batch.sender
        self.registry.errors += len(batch.bodies)
        if sender is None or sender.closing:
            return
        for index in range(len(batch.bodies)):
            error = self.wire.error(sender.id, reason, batch.first_request + index, queue=batch.queue.name)
            if batch.replies is not None:
                batch.replies.append(error)
            else:
                sender.send(error)

    def delivered_elsewhere(self, queue: str, first_id: int, bodies: list[bytes], stamps: bytes) -> None:
        """Messages another node published: to this node's subscribers of ``queue``, if it has any."""
        known = self.registry.queues.get(queue)
        if known is not None and known.subscribers:
            self._pend(known, self.wire.deliveries(known.name_bytes, bodies, stamps, first_id), len(bodies),
                       None, first_id)

    # -- fan-out -----------------------------------------------------------------------

    def _pend(self, queue: "Queue", blob: bytes, count: int, sender: "Connection | None", first_id: int) -> None:
        """Queue ``count`` frames from ``sender`` for this turn's fan-out (a subscribed sender: with ``echo`` only)."""
        skip = sender if sender is not None and not sender.echo and sender in queue.subscribers else None
        pending = queue.pending
        if not pending:
            self._dirty_queues.append(queue)
            self.schedule()
        pending.append((blob, count, skip, sender, first_id))

    @property
    def busy(self) -> bool:
        """Whether queues wait for :meth:`fan_out`."""
        return bool(self._dirty_queues)

    def fan_out(self, now: float) -> int:
        """Hand each queue's frames of this turn to its subscribers; return how many deliveries.

        No delivery that raises stops the others: it is logged and counted.
        """
        queues, self._dirty_queues = self._dirty_queues, []
        delivered = 0
        for queue in queues:
            try:
                delivered += self._fan_out_queue(queue, now)
            except Exception:
                self.broker.output_failed(None, f"the fan-out of queue {queue.name!r}")
        return delivered

    def _fan_out_queue(self, queue: "Queue", now: float) -> int:
        """Hand this turn's frames of ``queue`` to its subscribers; hold the publishers of congested ones."""
        entries, queue.pending = queue.pending, []
        queue.rate.add(now, entries[0][1] if len(entries) == 1 else sum([entry[1] for entry in entries]))
        if len(entries) == 1 and len(entries[0][0]) <= self._max_blob:
            groups = [entries]
        else:
            groups = _pieces(entries, self._max_blob)
        subscribers = tuple(queue.subscribers)  # a delivery may end a subscription
        delivered = 0
        congested: list["Connection"] = []
        for group in groups:
            delivered += self._deliver_group(queue, group, subscribers, congested)
        if congested:
            senders = {entry[3] for entry in entries if entry[3] is not None}
            for subscriber in dict.fromkeys(congested):
                for sender in senders:
                    subscriber.hold_publisher(sender, queue.name)
        return delivered

    def _deliver_group(self, queue: "Queue", entries: list[Pending], subscribers: tuple["Connection", ...],
                       congested: list["Connection"]) -> int:
        """Deliver ``entries`` joined to ``subscribers``; add the congested ones to ``congested``."""
        if len(entries) == 1:
            blob, count, skip, _, first_id = entries[0]
            skipping = {skip} if skip is not None else None
        else:
            blob = b"".join([entry[0] for entry in entries])
            count = sum([entry[1] for entry in entries])
            first_id = entries[0][4]
            skipping = {entry[2] for entry in entries if entry[2] is not None} or None
        last_id = entries[-1][4] + entries[-1][1] - 1
        name = queue.name
        delivered = 0
        for subscriber in subscribers:
            try:
                data, n = blob, count
                if skipping is not None and subscriber in skipping:
                    # A publisher subscribed to its own queue (without echo) skips its own frames.
                    mine = [entry for entry in entries if entry[2] is not subscriber]
                    if not mine:
                        continue
                    data = b"".join([entry[0] for entry in mine])
                    n = sum([entry[1] for entry in mine])
                if subscriber.deliver(data, name, first_id, last_id):
                    congested.append(subscriber)
                subscriber.messages_out += n
                delivered += n
            except Exception:
                self.broker.output_failed(subscriber, f"a delivery on queue {name!r}")
        return delivered


def _pieces(entries: list[Pending], limit: int) -> list[list[Pending]]:
    """``entries`` in groups whose frames add up to at most ``limit`` bytes, in order.

    An entry larger than ``limit`` is cut at frame boundaries (a frame larger
    than ``limit`` goes alone).
    """
    groups: list[list[Pending]] = []
    group: list[Pending] = []
    size = 0
    for entry in entries:
        blob = entry[0]
        if len(blob) > limit:
            if group:
                groups.append(group)
                group, size = [], 0
            groups.extend([piece] for piece in _cut(entry, limit))
            continue
        if group and size + len(blob) > limit:
            groups.append(group)
            group, size = [], 0
        group.append(entry)
        size += len(blob)
    if group:
        groups.append(group)
    return groups


def _cut(entry: Pending, limit: int) -> list[Pending]:
    """One entry's frames in pieces of at most ``limit`` bytes (whole frames), each with its count and first id."""
    blob, _, skip, sender, first_id = entry
    pieces: list[Pending] = []
    start = 0
    count = 0
    for begin, end in split_frames(blob):
        if end - start > limit and count:
            pieces.append((blob[start:begin], count, skip, sender, first_id))
            start, first_id, count = begin, first_id + count, 0
        count += 1
    pieces.append((blob[start:], count, skip, sender, first_id))
    return pieces


def _is_control(message: dict) -> bool:
    for key in message:
        if key.startswith("coremq_") and key not in P.STAMP_KEYS and key not in (P.STRING, P.ARRAY):
            return True
    return False


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__
