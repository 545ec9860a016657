"""The engine seam: where a broker's message ids, history and other nodes live.

The broker's pipeline (:mod:`coremq_broker.core.broker`) validates and stamps
what a connection publishes, then hands each :class:`Batch` (one or more
messages to one queue, in order) to its engine with :meth:`Engine.publish`.
The engine numbers the batch, keeps it in history, and gives it back to the
broker with :meth:`Node.numbered`, which delivers it to this node's
subscribers and acknowledges it to its publisher; or refuses it with
:meth:`Node.refused`. An engine may call back at once, inside ``publish``
(:class:`MemoryEngine` for a queue in memory) or later, on the loop (a
durable queue once its write has committed; an engine that numbers in another
process). The pipeline does not know which engine it has; one is chosen when
the broker is built (``Broker(engine=...)``) and never changes.

Messages from other nodes arrive through :meth:`Node.delivered_elsewhere`,
in id order per queue; an engine with no other nodes never calls it.

A message travels as the JSON object it was published as (``body``, ending in
its closing brace) and the stamps the broker adds before that brace, the same
for every message of a batch but the id (``stamps``, ending with the id's
key: see :func:`coremq_broker.core.wire.stamps`). Message ``first_id + i`` of
a batch is ``wire.stamped(bodies[i], stamps, first_id + i)``; history entries
are ``(id, body, stamps)`` triples read the same way. Only
:mod:`~coremq_broker.core.wire` turns them into bytes on the wire.

Everything here runs on the broker's event loop; nothing blocks it.

:class:`MemoryEngine` is the embedded default: ids and history in the
registry's queues, durable queues in an SQLite file
(:class:`~coremq_broker.core.durable.HistoryStore`), one node.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from .durable import UNAVAILABLE, HistoryStore
from .limits import keep_run
from .wire import ID_STAMP, split_stored, stamped

if TYPE_CHECKING:
    from .config import BrokerConfig
    from .limits import Bounds
    from .registry import Connection, Queue, Registry

__all__ = ["Batch", "Engine", "MemoryEngine", "Node"]

logger = logging.getLogger("coremq.broker")


class Batch:
    """Messages published to one queue, in order, by one sender (None: the server) at one time.

    ``bodies`` are JSON objects (bytes) ending in their closing brace;
    ``stamps`` is what goes before each brace, up to the id's value (see the
    module docstring). ``first_request`` numbers the sender's request that
    carried the first message (the others follow one by one). ``replies``
    collects the acknowledgements while the sender's read is being handled
    (they keep their order with the other answers of that read); once the
    broker sets it to None, acknowledgements are sent as they come.
    """

    __slots__ = ("queue", "bodies", "stamps", "sender", "first_request", "now", "replies")

    def __init__(self, queue: "Queue", bodies: list[bytes], stamps: bytes, sender: "Connection | None",
                 first_request: int, now: float, replies: list[bytes] | None = None) -> None:
        self.queue = queue
        self.bodies = bodies
        self.stamps = stamps
        self.sender = sender
        self.first_request = first_request
        self.now = now
        self.replies = replies

    def __len__(self) -> int:
        return len(self.bodies)

    def one(self, index: int) -> "Batch":
        """Message ``index`` as a batch of its own (its request number follows)."""
        return Batch(self.queue, [self.bodies[index]], self.stamps, self.sender, self.first_request + index,
                     self.now, self.replies)


class Node(Protocol):
    """What an engine calls on the broker it serves (on the broker's loop)."""

    def numbered(self, batch: Batch, first_id: int) -> None:
        """``batch`` has ids ``first_id``, ``first_id + 1``, ... and is kept: deliver it here, acknowledge it."""

    def refused(self, batch: Batch, reason: str) -> None:
        """``batch`` was not numbered and is not kept: answer its sender ``ERROR: reason`` per message."""

    def delivered_elsewhere(self, queue: str, first_id: int, bodies: list[bytes], stamps: bytes) -> None:
        """Messages published on another node, ids from ``first_id``: deliver them to this node's subscribers."""


class Engine(Protocol):
    """Where ids, history and other nodes live. Chosen once, when the broker is built.

    Contract:

    - :meth:`start` runs once on the broker's loop before it accepts
      connections (restore what was kept, connect); :meth:`close` once at its
      shutdown, after it stopped reading, before its BYEs (commit what is
      queued: its callbacks still run).
    - :meth:`publish` takes every batch, in the order the broker made them,
      and calls ``node.numbered`` or ``node.refused`` exactly once per message
      (once for the whole batch, or per message), in order per queue. Ids of a
      queue start at 1 and only increase; what was numbered and acknowledged
      is kept until history trims it.
    - :meth:`history` returns ``queue``'s kept messages as ``(id, body,
      stamps)``, oldest first; :attr:`Queue.last_id` is the newest id given.
    - :meth:`purge` forgets a queue's history (kept and stored).
    - :meth:`describe` is the engine's part of the status reply (``durable``).

    Optional, for an engine with other nodes (the Redis engine,
    ``coremq_broker/cluster/broker_engine.py``); the broker asks with
    ``getattr`` and an engine without them behaves as :class:`MemoryEngine`:

    - ``load_history(names)`` and ``subscribed(names)`` return an awaitable
      (or None: nothing to wait for) that the history request, and the
      subscribe's answer, wait for; the connection's later frames wait too.
    - ``may_hold(name)``: a connection address this broker does not hold may
      be held by another node, so a publish to it goes to the engine.
    - ``describe()`` with ``others`` (the other live nodes) and ``node`` (this
      one's name) puts ``node`` and ``other_nodes`` in the status reply.
    """

    name: str

    def bind(self, node: Node, registry: "Registry", bounds: "Bounds") -> None: ...

    async def start(self, loop: asyncio.AbstractEventLoop) -> None: ...

    async def close(self) -> None: ...

    def publish(self, batch: Batch) -> None: ...

    def history(self, queue: "Queue") -> Iterable[tuple[int, bytes, bytes]]: ...

    def purge(self, queue: "Queue") -> None: ...

    def describe(self) -> dict[str, Any]: ...


class MemoryEngine:
    """One node: ids and history in memory; durable queues in SQLite (``DURABLE_PATH``).

    A durable queue's message is written first and numbered, kept, delivered
    and acknowledged once committed; a failed write gives its id back (no gap
    for resuming clients). A publisher that outruns a healthy disk is not read
    from a quarter of ``DURABLE_MAX_PENDING(_BYTES)`` until the writes drain to
    an eighth, so the limits refuse only what one read already held.
    """

    name = "memory"

    def __init__(self, config: "BrokerConfig") -> None:
        self.config = config
        self.durable_all = config.durable_all
        self.store: HistoryStore | None = None
        self._node: Node | None = None
        self._registry: "Registry | None" = None
        self._bounds: "Bounds | None" = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Publishers not read while many durable writes wait for the disk: released by _ease.
        self._held: dict["Connection", None] = {}

    def bind(self, node: Node, registry: "Registry", bounds: "Bounds") -> None:
        self._node, self._registry, self._bounds = node, registry, bounds

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Restore the durable history if there is one (or every queue is durable); raise DurableHistoryError."""
        self._loop = loop
        if self.durable_all or os.path.exists(self.config.durable_path):
            await self._restore()

    async def close(self) -> None:
        """Commit what is queued for the disk; the loop delivers and acknowledges it meanwhile."""
        if self.store is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)
            await asyncio.sleep(0)

    # -- publishing ------------------------------------------------------------

    def durable(self, queue: "Queue") -> bool:
        """Whether ``queue``'s messages are written to disk before they are delivered."""
        return (queue.settings.durable or self.durable_all) and queue.owner is None

    def publish(self, batch: Batch) -> None:
        queue = batch.queue
        if (not queue.plain or self.durable_all) and self.durable(queue):  # plain: neither durable nor size-limited
            for index in range(len(batch)):
                self._publish_durable(batch.one(index) if len(batch) > 1 else batch)
            return
        count = len(batch.bodies)
        first_id = queue.last_id + 1
        queue.last_id += count
        keep_run(self._bounds, self._registry, queue, first_id, batch.bodies, batch.stamps)  # type: ignore[arg-type]
        self._node.numbered(batch, first_id)  # type: ignore[union-attr]

    def _publish_durable(self, batch: Batch) -> None:
        """Write one message to disk first; keep, deliver and acknowledge it once committed."""
        node = self._node
        assert node is not None
        store = self._history_store()
        refusal = store.refusal()
        if refusal is not None:
            node.refused(batch, refusal)
            return
        queue = batch.queue
        queue.last_id += 1
        message_id = queue.last_id

        def committed() -> None:
            keep_run(self._bounds, self._registry, queue, message_id, batch.bodies, batch.stamps)  # type: ignore[arg-type]
            node.numbered(batch, message_id)
            self._ease(store)

        def failed(reason: str) -> None:
            node.refused(batch, f"{UNAVAILABLE}: {reason}")
            self._ease(store)

        store.write(queue.name, message_id, stamped(batch.bodies[0], batch.stamps, message_id), committed, failed)
        sender = batch.sender
        if (sender is not None and (store.pending >= store.max_pending // 4
                                    or store.pending_bytes >= store.max_pending_bytes // 4)
                and sender not in self._held and not sender.closing):
            self._held[sender] = None
            sender.hold()

    def _ease(self, store: HistoryStore) -> None:
        """Read the publishers held for the disk again once its writes drained (or failed)."""
        if self._held and (store.pending <= store.max_pending // 8
                           and store.pending_bytes <= store.max_pending_bytes // 8 or store.error is not None):
            held, self._held = self._held, {}
            for connection in held:
                connection.release()

    # -- history -----------------------------------------------------------------

    def history(self, queue: "Queue") -> Iterable[tuple[int, bytes, bytes]]:
        return queue.history

    def purge(self, queue: "Queue") -> None:
        queue.history.clear()
        if self.store is not None:
            self.store.purge(queue.name)  # its durable history too

    def describe(self) -> dict[str, Any]:
        """The durable store's state: ``ok``, ``unavailable`` (with its error), or ``unused`` until needed."""
        if self.store is not None:
            return self.store.describe()
        return {"state": "unused", "path": self.config.durable_path}

    # -- the durable store ---------------------------------------------------------

    def _history_store(self) -> HistoryStore:
        """The durable history's store, its writer started on first use (it reports a file it cannot write)."""
        if self.store is None:
            config = self.config
            registry = self._registry
            assert registry is not None and self._loop is not None
            self.store = HistoryStore(config.durable_path, synchronous=config.durable_synchronous,
                                      keep=lambda name: registry.queue_settings(name).history_length,
                                      max_pending=config.durable_max_pending,
                                      max_pending_bytes=config.durable_max_pending_bytes,
                                      retry_max=config.durable_retry_max, on_rewind=self._rewind)
            self.store.start(self._loop)
            logger.info("durable history in %s", config.durable_path)
        return self.store

    async def _restore(self) -> None:
        """Load what the durable history holds, then start its writer; raise DurableHistoryError if unreadable."""
        assert self._loop is not None and self._registry is not None and self._bounds is not None
        path = self.config.durable_path
        store = HistoryStore(path)
        saved = await self._loop.run_in_executor(None, store.load) if os.path.exists(path) else {}
        bounds, registry = self._bounds, self._registry
        limit, bounds.max_queues = bounds.max_queues, 0  # durable queues come back whatever MAX_QUEUES says
        try:
            for name, rows in saved.items():
                queue = registry.queue(name)
                for message_id, stored in rows:
                    keep_run(bounds, registry, queue, message_id, [split_stored(stored, message_id)], ID_STAMP)
                queue.last_id = rows[-1][0]
        finally:
            bounds.max_queues = limit
        if saved:
            logger.info("restored the durable history of %d queue(s) from %s", len(saved), path)
        self._history_store()

    def _rewind(self, spans: dict[str, tuple[int, int]]) -> None:
        """Give back the ids ``(first, last)`` of each queue's durable writes that failed.

        They were the newest of their queue, so the next stored message takes
        ``first`` and no resuming client sees a gap. Only if the queue took
        later ids meanwhile (its settings stopped making it durable) are they
        skipped, and that is logged.
        """
        assert self._registry is not None
        for name, (first, last) in spans.items():
            queue = self._registry.queues.get(name)
            if queue is not None and queue.last_id == last:
                queue.last_id = first - 1
            elif queue is not None:
                logger.warning("queue %r: ids %d to %d were not stored and are skipped", name, first, last)
