"""The cluster library behind the broker's engine seam (coremq_broker/core/engine.py).

:class:`ClusterEngine` implements the ``Engine`` protocol on a
:class:`~coremq_broker.cluster.engine.RedisEngine`: every batch is numbered
in Redis; ``node.numbered`` or ``node.refused`` is called exactly once per
batch; batches of other nodes come through ``node.delivered_elsewhere``.

Order on this node. A queue with local subscribers is delivered here in the
order of its Redis channel, this node's own batches included: a batch is
numbered here when its delivery comes back through the channel (its origin
tag says it is ours), not when the script's answer comes, so a subscriber
never sees id 6 (ours, answered early) before id 5 (another node's, still on
the way). When the answer comes first, a PING through the pub/sub connection
tells whether the delivery is still on its way (Redis answers the PING after
every delivery it sent before; one PING covers every answer before it); if
it is not (the node started listening after the script ran), the batch is
numbered then. A queue without local subscribers is numbered as soon as
Redis answers.

What this node listens to. :meth:`bind` watches the registry's
``subscribe``, ``unsubscribe``, ``add`` and ``remove``: a public queue's
first local subscriber makes the node listen to its channel
(:meth:`subscriber_added`), its last one makes it stop
(:meth:`subscriber_removed`); a connection's channel is listened to while it
is open (:meth:`connection_opened` / :meth:`connection_closed`).

Point-to-point. :meth:`may_hold` lets a publish to a connection id this node
does not hold reach the engine; it goes to that connection's channel, and
Redis tells whether a node held it (else ``no such connection``). This node
keeps nothing of it.

History. :meth:`load_history` reads the named public queues' history from
Redis into the local queues before a history request is answered (the broker
awaits it when its engine has one), so ``history since N`` and client resume
work on any node. A reset (Redis lost a queue) closes the connections
subscribed to it here, as a broker restart would: they reconnect and their
resume sees the new numbering. Missing ids are logged and counted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from coremq_client.codec import split_address

from ..core.access import is_connection_address
from ..core.engine import Batch, Node
from ..core.limits import LimitExceeded, keep_run, recount
from .engine import RedisEngine
from .errors import ClusterUnavailable
from .settings import ClusterSettings
from .subscriber import Delivery

if TYPE_CHECKING:
    from ..core.limits import Bounds
    from ..core.registry import Connection, Queue, Registry

__all__ = ["ClusterEngine"]

logger = logging.getLogger("coremq.cluster")


class ClusterEngine:
    """Several nodes, one numbering: ids, history and fan-out through Redis (see the module docstring)."""

    name = "redis"

    def __init__(self, cluster: ClusterSettings, *, address: str = "",
                 figures: Callable[[], dict[str, Any]] | None = None) -> None:
        """``figures()`` adds to each heartbeat; by default the registry's counts (:meth:`figures`)."""
        self.redis = RedisEngine(cluster, address=address, on_delivery=self._delivered,
                                 figures=figures or self.figures)
        self._node: Node | None = None
        self._registry: "Registry | None" = None
        self._bounds: "Bounds | None" = None
        self._pending: dict[bytes, Batch] = {}  # origin -> a batch of ours not numbered yet
        self._tasks: set[asyncio.Task[None]] = set()
        # Answered batches of listened queues whose delivery had not come back: (origin, first id).
        self._unsure: list[tuple[bytes, int]] = []
        self._settling = False
        # Publishers not read while many batches wait for Redis (flow control).
        self._held: dict["Connection", None] = {}
        self.busy = 0
        self.resets = 0
        #: The other live nodes' heartbeats, as last read (every heartbeat interval).
        self.others: list[dict[str, Any]] = []
        self._starting: set[str] = set()  # queues this node began to listen to, until subscribed() is asked
        self._watching: asyncio.Task[None] | None = None

    def bind(self, node: Node, registry: "Registry", bounds: "Bounds") -> None:
        self._node, self._registry, self._bounds = node, registry, bounds
        self._watch(registry)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect to Redis; raise ClusterUnavailable if it does not answer."""
        await self.redis.start()
        self._watching = asyncio.ensure_future(self._watch_nodes())

    async def close(self) -> None:
        """Let the batches sent get their answer (or error), then leave the cluster."""
        if self._watching is not None:
            self._watching.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.redis.settings.command_timeout)
        await self.redis.close()

    @property
    def node_name(self) -> str:
        return self.redis.name

    def serving_at(self, address: str) -> None:
        """The node's TCP listener is bound at ``address`` (its heartbeats say so from now on)."""
        self.redis.heartbeat.address = address
        self._spawn(self._beat_now())

    async def _beat_now(self) -> None:
        try:
            await self.redis.heartbeat.beat()
        except Exception as exc:  # the next beat of the heartbeat's loop says it again
            logger.warning("cluster: heartbeat not written: %s", exc)

    async def _watch_nodes(self) -> None:
        """Keep :attr:`others` (the status reply's node list) as fresh as the heartbeats."""
        while True:
            try:
                self.others = [node for node in await self.redis.nodes() if node.get("name") != self.redis.name]
            except ClusterUnavailable:
                pass  # kept as last read; describe() tells the state
            except Exception:  # a heartbeat it cannot read: the list is kept, the next read may do
                logger.exception("cluster: the node list could not be read")
            await asyncio.sleep(self.redis.settings.heartbeat_interval)

    def subscribed(self, names: list[str]) -> Awaitable[None] | None:
        """Wait until Redis listens for this node to the queues ``names`` it began to listen to (None: no need).

        The broker answers the subscribe once it is done: anything another node
        publishes after the answer then reaches the subscriber.
        """
        if not self._starting.intersection(names):
            return None
        self._starting.difference_update(names)
        return self._synced()

    async def _synced(self) -> None:
        try:
            await self.redis.sync()
        except ClusterUnavailable:
            pass  # the subscription holds here; the channel is subscribed again with the connection

    # -- the registry, watched ------------------------------------------------------------

    def _watch(self, registry: "Registry") -> None:
        """Tell this engine of the first and last local subscriber of each public queue, and of connections.

        The registry's methods are wrapped on this registry alone; every
        subscription goes through them (the control requests, ``enforce``,
        a connection's close).
        """
        subscribe, unsubscribe, add, remove = registry.subscribe, registry.unsubscribe, registry.add, registry.remove

        def subscribing(connection: "Connection", name: str) -> None:
            queue = registry.queues.get(name)
            new = queue is None or connection not in queue.subscribers
            subscribe(connection, name)
            queue = registry.queues.get(name)
            if new and queue is not None and queue.owner is None and connection in queue.subscribers:
                if not self.redis.listening(name):
                    self._starting.add(name)
                self.subscriber_added(name)

        def unsubscribing(connection: "Connection", name: str) -> None:
            queue = registry.queues.get(name)
            held = queue is not None and queue.owner is None and connection in queue.subscribers
            unsubscribe(connection, name)
            if held and connection not in queue.subscribers:  # type: ignore[union-attr]
                self.subscriber_removed(name)

        def adding(connection: "Connection") -> None:
            add(connection)
            self.connection_opened(connection.id)

        def removing(connection: "Connection") -> None:
            if connection.id not in registry.connections:
                return remove(connection)
            held = [name for name in connection.subscriptions
                    if (queue := registry.queues.get(name)) is not None and queue.owner is None
                    and connection in queue.subscribers]
            remove(connection)
            for name in held:
                self.subscriber_removed(name)
            self.connection_closed(connection.id)

        registry.subscribe, registry.unsubscribe = subscribing, unsubscribing  # type: ignore[method-assign]
        registry.add, registry.remove = adding, removing  # type: ignore[method-assign]

    #: What a heartbeat carries of the registry's description (Registry.describe).
    FIGURES = ("connections", "queues", "messages_in", "messages_out", "rate_in", "rate_out", "rss_bytes")

    def figures(self) -> dict[str, Any]:
        """This node's counts for its heartbeat (empty before :meth:`bind`)."""
        if self._registry is None:
            return {}
        described = self._registry.describe()
        return {name: described.get(name) for name in self.FIGURES}

    # -- what this node listens to (to be called by the broker) ---------------------------

    def subscriber_added(self, queue: str) -> None:
        self.redis.subscribe(queue)

    def subscriber_removed(self, queue: str) -> None:
        self.redis.unsubscribe(queue)

    def connection_opened(self, connection_id: str) -> None:
        self.redis.listen(connection_id)

    def connection_closed(self, connection_id: str) -> None:
        self.redis.forget(connection_id)

    # -- publishing -------------------------------------------------------------------------

    def publish(self, batch: Batch) -> None:
        limit = self.redis.settings.max_pending
        if len(self._pending) >= limit:
            self.busy += 1
            self._node.refused(batch, f"cluster busy: {limit} publishes wait for Redis")  # type: ignore[union-attr]
            return
        origin = self.redis.next_origin()
        self._pending[origin] = batch
        self._spawn(self._publish(batch, origin))
        sender = batch.sender
        if (sender is not None and len(self._pending) >= limit // 4 and sender not in self._held
                and not sender.closing):
            self._held[sender] = None  # not read until Redis caught up (see _ease)
            sender.hold()

    def _ease(self) -> None:
        """Read the publishers held for Redis again once their batches drained to an eighth of the limit."""
        if self._held and len(self._pending) <= self.redis.settings.max_pending // 8:
            held, self._held = self._held, {}
            for connection in held:
                connection.release()

    def may_hold(self, address: str) -> bool:
        """Whether another node may hold the connection ``address`` names: Redis tells when it is published."""
        return True

    async def _publish(self, batch: Batch, origin: bytes) -> None:
        queue = batch.queue
        elsewhere = queue.owner is None and is_connection_address(queue.name)  # a connection on another node
        to_connection = split_address(queue.name)[0] if queue.owner is not None or elsewhere else None
        try:
            await self._send(batch, origin, to_connection)
        finally:
            if elsewhere and not queue.subscribers and self._registry.queues.get(queue.name) is queue:  # type: ignore[union-attr]
                # Not a queue of this node (nothing of it is kept here): it goes once the message went.
                del self._registry.queues[queue.name]  # type: ignore[union-attr]

    async def _send(self, batch: Batch, origin: bytes, to_connection: str | None) -> None:
        queue = batch.queue
        try:
            numbered = await self.redis.publish(queue.name, batch.bodies, batch.stamps, origin=origin,
                                                history_length=queue.settings.history_length,
                                                to_connection=to_connection)
        except (ClusterUnavailable, LookupError) as exc:
            if self._pending.pop(origin, None) is not None:
                self._node.refused(batch, str(exc).strip("'\""))  # type: ignore[union-attr]
                self._ease()
            return
        if origin not in self._pending:
            return  # its delivery came back first and numbered it
        if numbered.receivers and self._listens_to(queue.name, to_connection):
            self._unsure.append((origin, numbered.first_id))
            if not self._settling:
                self._settling = True
                self._spawn(self._settle())
            return
        del self._pending[origin]
        self._number(batch, numbered.first_id)

    async def _settle(self) -> None:
        """Number the answered batches whose delivery did not come back, once a PING shows it is not coming.

        One PING covers every answer that came before it was sent.
        """
        try:
            while self._unsure:
                answered, self._unsure = self._unsure, []
                try:
                    await self.redis.subscriber.sync()  # every delivery Redis sent before is read now
                except ClusterUnavailable:
                    pass  # not listening now: number them here (the catch-up will know them as ours)
                for origin, first_id in answered:
                    batch = self._pending.pop(origin, None)
                    if batch is not None:
                        self._number(batch, first_id)
        finally:
            self._settling = False

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _listens_to(self, queue: str, to_connection: str | None) -> bool:
        if to_connection is not None:
            return self.redis.subscriber.listening(self.redis.keys.connection_channel(to_connection))
        return self.redis.listening(queue)

    def _number(self, batch: Batch, first_id: int) -> None:
        queue = batch.queue
        queue.last_id = max(queue.last_id, first_id + len(batch.bodies) - 1)
        if queue.owner is not None or not is_connection_address(queue.name):  # not kept for another node's connection
            keep_run(self._bounds, self._registry, queue, first_id, batch.bodies, batch.stamps)  # type: ignore[arg-type]
        self._node.numbered(batch, first_id)  # type: ignore[union-attr]
        self._ease()

    # -- deliveries through Redis --------------------------------------------------------------

    def _delivered(self, delivery: Delivery) -> None:
        """A batch from the channel, in id order: ours is numbered here now; another node's delivered here."""
        if delivery.missing is not None or delivery.reset:
            self._note_hole(delivery)
        if not delivery.bodies:
            return
        origin = delivery.origin
        batch = self._pending.pop(origin, None) if origin else None
        if batch is not None:
            # Whole, or cut to what was not delivered yet, or one entry read back from history.
            first_id = (delivery.first_id if len(delivery.bodies) in (1, len(batch.bodies))
                        else delivery.last_id - len(batch.bodies) + 1)
            self._number(batch, first_id)
            return
        if origin and self.redis.is_mine(origin):
            return  # numbered here already (a batch read back from history after a reconnect)
        registry = self._registry
        assert registry is not None
        queue = registry.queues.get(delivery.queue)
        if queue is None and registry.owner_of(delivery.queue) is not None:
            queue = registry.queue(delivery.queue)  # a sub-address of a connection here (a bridge's browser)
        if queue is not None:
            queue.last_id = max(queue.last_id, delivery.last_id)
            keep_run(self._bounds, self._registry, queue, delivery.first_id, delivery.bodies,  # type: ignore[arg-type]
                     delivery.stamps)
        self._node.delivered_elsewhere(delivery.queue, delivery.first_id, delivery.bodies,  # type: ignore[union-attr]
                                       delivery.stamps)

    def _note_hole(self, delivery: Delivery) -> None:
        queue = self._registry.queues.get(delivery.queue)  # type: ignore[union-attr]
        if delivery.reset:
            self.resets += 1
            logger.warning("cluster: queue %r was lost by Redis: its numbering restarted", delivery.queue)
            if queue is not None:
                queue.history.clear()
                recount(self._bounds, queue)  # type: ignore[arg-type]
                queue.last_id = delivery.first_id - 1
                # Its subscribers hold ids of the old numbering: as after a broker restart, they
                # reconnect, and their resume sees the new numbering (a gap, then its messages).
                for connection in list(queue.subscribers):
                    connection.close(f"queue {delivery.queue!r} was renumbered (Redis lost it): reconnect and resume")
        if delivery.missing is not None:
            logger.warning("cluster: queue %r: ids %d to %d left history before this node read them",
                           delivery.queue, *delivery.missing)

    # -- history -----------------------------------------------------------------------------

    def history(self, queue: "Queue") -> Iterable[tuple[int, bytes, bytes]]:
        """What this node holds of ``queue``: what :meth:`load_history` read, its own batches, what it received."""
        return queue.history

    def load_history(self, names: list[str]) -> Awaitable[None] | None:
        """Read the public queues ``names``' history from Redis into the local queues (None: nothing to read).

        The broker awaits it before it answers a history request, so any node
        answers with the history every node shares.
        """
        registry = self._registry
        assert registry is not None
        public = [name for name in dict.fromkeys(names)
                  if registry.owner_of(name) is None and not registry.is_closed_address(name)]
        return self._load(public) if public else None

    async def _load(self, names: list[str]) -> None:
        registry, bounds = self._registry, self._bounds
        assert registry is not None and bounds is not None
        for name in names:
            queue = registry.queues.get(name)
            mark = queue.history[-1] if queue is not None and queue.history else None
            page = await self.redis.history(name)  # raises ClusterUnavailable: the request is refused
            if page.epoch is None:
                continue  # Redis holds nothing of it: the local answer stands
            queue = registry.queues.get(name)
            if queue is None:
                try:
                    queue = registry.queue(name)
                except LimitExceeded:
                    continue  # MAX_QUEUES: answered as unknown here
            read = [(message_id, body, stamps) for message_id, body, stamps, _ in page.messages]
            newest = read[-1][0] if read else 0
            # What came here while Redis was read (after ``mark``) and is newer than what it said.
            came = list(queue.history)
            for index in range(len(came) - 1, -1, -1):
                if came[index] is mark:
                    came = came[index + 1:]
                    break
            newer = [entry for entry in came if entry[0] > newest]
            queue.history.clear()
            queue.history.extend(read + newer)
            recount(bounds, queue)
            queue.last_id = max(page.last, newer[-1][0] if newer else 0)  # Redis's word, or what came since

    def purge(self, queue: "Queue") -> None:
        queue.history.clear()
        task = asyncio.ensure_future(self.redis.purge(queue.name))
        self._tasks.add(task)
        task.add_done_callback(self._purged)

    def _purged(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("cluster: history not purged in Redis: %s", task.exception())

    def describe(self) -> dict[str, Any]:
        """The engine's part of a status reply: this node's name and state, and the other live nodes."""
        others = [{key: node.get(key) for key in ("name", "address", "uptime", *self.FIGURES)} for node in self.others]
        return {**self.redis.describe(), "resets": self.resets, "waiting": len(self._pending), "busy": self.busy,
                "held_publishers": len(self._held), "others": others}
