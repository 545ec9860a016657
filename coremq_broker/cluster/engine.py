"""The cluster's Redis side, as a library: ids, history, cross-node delivery, heartbeats.

:class:`RedisEngine` is what one node holds. It numbers publish batches
atomically in Redis (:data:`~coremq_broker.cluster.scripts.PUBLISH_SCRIPT`),
reads history ``since`` an id with paging, listens to the queues that have
local subscribers (:class:`~coremq_broker.cluster.subscriber.Subscriber`),
reaches connections on any node, and writes this node's heartbeat.

It speaks the engine seam's vocabulary (coremq_broker/core/engine.py): a
message is its JSON ``body`` (ending in its closing brace) and the batch's
``stamps``; history entries are ``(id, body, stamps, origin)``. Plugging it
into the broker as an ``Engine`` is not done yet (docs/cluster.md says what
remains).

Everything runs on one event loop; nothing blocks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from .errors import ClusterUnavailable
from .keys import Keys
from .nodes import Heartbeat, list_nodes
from .scripts import PUBLISH_SCRIPT
from .settings import ClusterSettings, redact
from .subscriber import Delivery, HistoryPage, Subscriber

__all__ = ["RedisEngine", "Numbered", "HistoryPage", "Delivery"]

logger = logging.getLogger("coremq.cluster")


@dataclass(frozen=True)
class Numbered:
    """A batch Redis took: ids ``first_id`` .. ``first_id + count - 1`` of epoch ``epoch``.

    ``receivers``: how many nodes listened to its channel when it was published.
    """

    queue: str
    epoch: int
    first_id: int
    count: int
    receivers: int

    @property
    def last_id(self) -> int:
        return self.first_id + self.count - 1


class _Pending:
    __slots__ = ("keys", "args", "future")

    def __init__(self, keys: list[bytes], args: list[Any], future: asyncio.Future[Any]) -> None:
        self.keys = keys
        self.args = args
        self.future = future


class RedisEngine:
    """One node's link to the cluster's Redis (see the module docstring).

    ``on_delivery`` gets every batch published (on any node, this one
    included) to a queue this node listens to, in id order and exactly once
    per queue; ``figures()`` adds the broker's counts to each heartbeat.
    """

    def __init__(self, settings: ClusterSettings, *, address: str = "",
                 on_delivery: Callable[[Delivery], None] | None = None,
                 figures: Callable[[], dict[str, Any]] | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.name = settings.node_name
        self.where = redact(settings.redis_url)
        options = dict(socket_connect_timeout=settings.connect_timeout, socket_keepalive=True,
                       **settings.redis_options)
        # One retry, on a new connection, of a command whose connection broke (a pooled one
        # that Redis closed while idle); none after a timeout, which may have run it.
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self.client = Redis.from_url(settings.redis_url, socket_timeout=settings.command_timeout, retry=retry,
                                     **options)
        pubsub_client = Redis.from_url(settings.redis_url, socket_timeout=None, **options)
        self._sha = hashlib.sha1(PUBLISH_SCRIPT.encode()).hexdigest()
        self.subscriber = Subscriber(settings, self.keys, pubsub_client, self.client, self._history_page,
                                     on_delivery or (lambda delivery: None))
        self.heartbeat = Heartbeat(self.client, self.keys, self.name, address or self.name,
                                   interval=settings.heartbeat_interval, timeout=settings.node_timeout,
                                   figures=figures)
        self._pubsub_client = pubsub_client
        self._ttl_ms = int(settings.queue_ttl * 1000)
        self._pending: list[_Pending] = []
        self._flushing = False
        self._batches = itertools.count(1)
        self._origin_prefix = self.name.encode() + b" "
        self.published = 0
        self.refused = 0

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, *, wait: bool = True) -> None:
        """Connect; raise ClusterUnavailable if Redis does not answer. Then listen and beat in the background.

        With ``wait`` it returns once the pub/sub connection is up too.
        """
        try:
            await self.client.ping()
            await self.client.script_load(PUBLISH_SCRIPT)
        except (RedisError, OSError) as exc:
            raise ClusterUnavailable(f"cluster unavailable: Redis at {self.where}: {exc}") from None
        self.subscriber.start()
        self.heartbeat.start()
        if wait:
            await self.subscriber.sync()
        logger.info("cluster: node %s on Redis at %s (key prefix %r)", self.name, self.where, self.keys.prefix)

    async def close(self, *, leave: bool = True) -> None:
        """Stop listening and beating; with ``leave`` this node leaves the node list at once."""
        await self.heartbeat.stop(remove=leave)
        await self.subscriber.stop()
        for client in (self.client, self._pubsub_client):
            try:
                await asyncio.wait_for(client.aclose(), self.settings.command_timeout)
            except (RedisError, OSError, asyncio.TimeoutError):
                pass

    # -- publishing ------------------------------------------------------------------

    def next_origin(self) -> bytes:
        """A new batch tag ``<node> <n>``: deliveries and history entries of the batch carry it."""
        return b"%s %d" % (self.name.encode(), next(self._batches))

    def is_mine(self, origin: bytes) -> bool:
        """Whether ``origin`` tags a batch this node published."""
        return origin.startswith(self._origin_prefix)

    async def publish(self, queue: str, bodies: Sequence[bytes], stamps: bytes, *, history_length: int,
                      to_connection: str | None = None, origin: bytes | None = None) -> Numbered:
        """Number ``bodies`` (one batch to ``queue``), keep the last ``history_length`` of the queue, deliver.

        Batches are sent in the order of the calls, pipelined, so a queue's
        ids follow the calls' order. ``to_connection``: the batch is for that
        connection (``queue`` is its id or a sub-address of it) on whichever
        node holds it; if none does, nothing is kept and it raises LookupError.
        ``origin`` tags the batch (:meth:`next_origin` by default).
        Raises :class:`ClusterUnavailable` if Redis did not answer (nothing may
        be taken as published).
        """
        if not bodies:
            raise ValueError("a batch needs at least one message")
        direct = to_connection is not None
        channel = self.keys.connection_channel(to_connection) if direct else self.keys.queue_channel(queue)
        origin = self.next_origin() if origin is None else origin
        args = [history_length, self._ttl_ms, channel, queue, 1 if direct else 0, origin, stamps, *bodies]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending([self.keys.meta(queue), self.keys.history(queue)], args, future))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().create_task(self._flush())
        epoch, first_id, receivers = await future
        if first_id == 0:
            raise LookupError(f"no such connection: {to_connection}")
        self.published += len(bodies)
        return Numbered(queue, int(epoch), int(first_id), len(bodies), int(receivers))

    async def _flush(self) -> None:
        """Send what waits as one pipeline; one pipeline at a time, so batches run in call order."""
        try:
            while self._pending:
                pending, self._pending = self._pending, []
                results = await self._run_scripts(pending)
                for item, result in zip(pending, results):
                    if item.future.done():
                        continue
                    if isinstance(result, BaseException):
                        self.refused += 1
                        item.future.set_exception(self._unavailable(result))
                    else:
                        item.future.set_result(result)
        finally:
            self._flushing = False

    async def _run_scripts(self, pending: list[_Pending]) -> list[Any]:
        """EVALSHA each batch in one pipeline; load the script and run again what Redis did not know it for."""
        results: list[Any] = [None] * len(pending)
        todo = list(range(len(pending)))
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for index in todo:
                item = pending[index]
                pipe.evalsha(self._sha, len(item.keys), *item.keys, *item.args)
            try:
                answers = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                answers = [exc] * len(todo)
            unknown = []
            for index, answer in zip(todo, answers):
                if isinstance(answer, NoScriptError) and attempt == 0:
                    unknown.append(index)  # not run: Redis restarted or flushed its scripts
                results[index] = answer
            if not unknown:
                break
            try:
                await self.client.script_load(PUBLISH_SCRIPT)
            except (RedisError, OSError) as exc:
                for index in unknown:
                    results[index] = exc
                break
            todo = unknown
        return results

    def _unavailable(self, exc: BaseException) -> ClusterUnavailable:
        return ClusterUnavailable(f"cluster unavailable: Redis at {self.where}: {exc or type(exc).__name__}")

    # -- history ---------------------------------------------------------------------

    async def history(self, queue: str, since: int | None = None, limit: int | None = None) -> HistoryPage:
        """``queue``'s kept messages after id ``since`` (all: None), oldest first, at most ``limit``.

        ``more`` says that ``limit`` cut it short: ask again from the last id
        returned. ``epoch`` is None when Redis holds nothing of the queue;
        ``first`` is the oldest id kept, ``last`` the newest id given.
        """
        try:
            return await self._history_page(queue, since or 0, limit)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def _history_page(self, queue: str, since: int, limit: int | None) -> HistoryPage:
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(self.keys.meta(queue), "epoch", "last")
        start = f"(0-{since}" if since > 0 else "-"
        pipe.xrange(self.keys.history(queue), start, "+", count=None if limit is None else limit + 1)
        pipe.xrange(self.keys.history(queue), "-", "+", count=1)
        (epoch, last), entries, oldest = await pipe.execute()
        more = limit is not None and len(entries) > limit
        messages = [(_entry_id(entry_id), fields[b"b"], fields.get(b"s", b""), fields.get(b"o", b""))
                    for entry_id, fields in (entries[:limit] if more else entries)]
        return HistoryPage(queue, None if epoch is None else int(epoch), _entry_id(oldest[0][0]) if oldest else None,
                           int(last or 0), messages, more)

    async def purge(self, queue: str) -> None:
        """Forget ``queue``'s history (its numbering goes on)."""
        try:
            await self.client.delete(self.keys.history(queue))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    # -- listening ------------------------------------------------------------------

    def subscribe(self, queue: str) -> None:
        self.subscriber.subscribe(queue)

    def unsubscribe(self, queue: str) -> None:
        self.subscriber.unsubscribe(queue)

    def listen(self, connection_id: str) -> None:
        self.subscriber.listen(connection_id)

    def forget(self, connection_id: str) -> None:
        self.subscriber.forget(connection_id)

    def listening(self, queue: str) -> bool:
        """Whether this node listens to ``queue``'s channel (it has local subscribers)."""
        return self.subscriber.listening(self.keys.queue_channel(queue))

    async def sync(self) -> None:
        """Return once Redis applied every (un)subscribe so far, and every delivery it sent before was read."""
        await self.subscriber.sync()

    # -- nodes -----------------------------------------------------------------------

    async def nodes(self) -> list[dict[str, Any]]:
        """Every live node's last heartbeat (this one's included once it beat), by name."""
        try:
            return await list_nodes(self.client, self.keys)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    @property
    def healthy(self) -> bool:
        """True while the pub/sub connection is up and its probe answers."""
        return self.subscriber.connected.is_set()

    def describe(self) -> dict[str, Any]:
        subscriber = self.subscriber
        return {
            "engine": "redis",
            "node": self.name,
            "redis": self.where,
            "key_prefix": self.keys.prefix,
            "state": "ok" if self.healthy else "unavailable",
            "error": subscriber.down_reason,
            "channels": len(subscriber._wanted),
            "published": self.published,
            "refused": self.refused,
            "reconnects": subscriber.reconnects,
            "probes_failed": subscriber.probes_failed,
            "missing": subscriber.missing,
            "heartbeats": self.heartbeat.beats,
            "time": time.time(),
        }


def _entry_id(entry_id: bytes) -> int:
    """The message id of a history entry's stream id ``0-<id>``."""
    return int(entry_id.split(b"-", 1)[1])
