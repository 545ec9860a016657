"""One node's pub/sub connection to the cluster's Redis: what it listens to, in order, exactly once.

The node listens to a queue's channel only while it has local subscribers:
:meth:`Subscriber.subscribe` and :meth:`Subscriber.unsubscribe` count them,
and the changes of one loop iteration go to Redis as one ``SUBSCRIBE`` and
one ``UNSUBSCRIBE``. A connection's own channel (point-to-point messages to
it and its sub-addresses, from any node) is listened to while the connection
is open (:meth:`Subscriber.listen` / :meth:`Subscriber.forget`).

Every batch goes to ``on_delivery`` as a :class:`Delivery`, per queue in id
order and exactly once: a batch that repeats ids already delivered is cut or
dropped; one that leaves a hole (the connection was lost meanwhile) waits
while the hole is read from the queue's history, and what history no longer
holds is reported as ``missing``; a new epoch (Redis lost the queue) is
reported as ``reset``.

The connection is checked by a probe through pub/sub itself: every
``probe_interval`` seconds a message is published to this node's probe
channel and must come back within ``probe_timeout``. A connection that looks
open but delivers nothing (a stopped or paused Redis, a dead route) fails the
probe and is made again, with a backoff from 0.1 s to ``reconnect_max``;
after a reconnect every channel is subscribed again and every queue is caught
up from its history.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from .errors import ClusterUnavailable
from .keys import Keys
from .scripts import Payload, PayloadError, parse_payload
from .settings import ClusterSettings

__all__ = ["Delivery", "Subscriber", "HistoryPage"]

logger = logging.getLogger("coremq.cluster")


@dataclass(frozen=True)
class Delivery:
    """Messages ``first_id``, ``first_id + 1``, ... of ``queue`` (``bodies`` with ``stamps``), in id order.

    ``origin`` is ``<node> <n>``: the node that published the batch and its
    batch number there (empty for messages read back from history).
    ``reset``: the queue's numbering restarted (epoch ``epoch``; Redis lost
    its state): ids before mean nothing. ``missing``: ``(first, last)`` ids
    before ``first_id`` that left history before they could be delivered
    (``bodies`` may then be empty: nothing after the hole is known yet).
    """

    queue: str
    epoch: int
    first_id: int
    bodies: list[bytes]
    stamps: bytes
    origin: bytes = b""
    reset: bool = False
    missing: tuple[int, int] | None = None

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.bodies) - 1


@dataclass(frozen=True)
class HistoryPage:
    """What :meth:`RedisEngine.history` answers: ``messages`` are ``(id, body, stamps, origin)``."""

    queue: str
    epoch: int | None
    first: int | None
    last: int
    messages: list[tuple[int, bytes, bytes, bytes]]
    more: bool


ReadHistory = Callable[[str, int, int], Awaitable[HistoryPage]]


class Subscriber:
    """The node's subscriptions and its one pub/sub connection (see the module docstring)."""

    def __init__(self, settings: ClusterSettings, keys: Keys, pubsub_client: Redis, command_client: Redis,
                 read_history: ReadHistory, on_delivery: Callable[[Delivery], None]) -> None:
        self.settings = settings
        self.keys = keys
        self._pubsub_client = pubsub_client
        self._commands = command_client
        self._read_history = read_history
        self.on_delivery = on_delivery
        self.probe_channel = keys.probe_channel(settings.node_name)
        self._wanted: dict[bytes, int] = {}  # channel -> local subscribers
        self._sent: set[bytes] = set()  # channels subscribed on the current connection
        self._queues_of: dict[bytes, set[str]] = {}  # channel -> queues delivered on it (their marks)
        self._marks: dict[str, tuple[int, int]] = {}  # queue -> (epoch, last id delivered)
        self._filling: dict[str, list[Payload]] = {}  # queue -> live batches held while its hole is read
        self._pubsub: PubSub | None = None
        self._waiters: dict[bytes, asyncio.Future[None]] = {}  # pong or probe token -> its waiter
        self._tokens = itertools.count(1)
        self._apply_scheduled = False
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        #: Why the connection is down (None while it is up).
        self.down_reason: str | None = "not started"
        self.reconnects = 0
        self.probes_failed = 0
        self.subscribe_commands = 0
        self.unsubscribe_commands = 0
        self.missing = 0

    # -- what to listen to -------------------------------------------------------

    def subscribe(self, queue: str) -> None:
        """One more local subscriber of ``queue``: the first one has this node listen to its channel."""
        self._want(self.keys.queue_channel(queue), 1)

    def unsubscribe(self, queue: str) -> None:
        """One local subscriber of ``queue`` fewer: after the last the node stops listening and forgets its mark."""
        self._want(self.keys.queue_channel(queue), -1)

    def listen(self, connection_id: str) -> None:
        """Listen to point-to-point messages for ``connection_id`` (and ``<id>/<n>``) while it is open here."""
        self._want(self.keys.connection_channel(connection_id), 1)

    def forget(self, connection_id: str) -> None:
        self._want(self.keys.connection_channel(connection_id), -1)

    def listening(self, channel: bytes) -> bool:
        return channel in self._wanted

    def _want(self, channel: bytes, change: int) -> None:
        count = self._wanted.get(channel, 0) + change
        if count > 0:
            self._wanted[channel] = count
        else:
            self._wanted.pop(channel, None)
            for queue in self._queues_of.pop(channel, ()):
                self._marks.pop(queue, None)
                self._filling.pop(queue, None)
        if not self._apply_scheduled and (count == 1 and change > 0 or count == 0):
            self._apply_scheduled = True
            asyncio.get_running_loop().call_soon(self._spawn, self._apply())

    async def _apply(self) -> None:
        """Send this iteration's subscription changes: one SUBSCRIBE and one UNSUBSCRIBE at most."""
        self._apply_scheduled = False
        pubsub = self._pubsub
        if pubsub is None or not self.connected.is_set():
            return  # the next connection subscribes to what is wanted then
        new = [channel for channel in self._wanted if channel not in self._sent]
        old = [channel for channel in self._sent if channel not in self._wanted]
        timeout = self.settings.command_timeout
        try:
            if new:
                self._sent.update(new)
                self.subscribe_commands += 1
                await asyncio.wait_for(pubsub.subscribe(*new), timeout)
            if old:
                self._sent.difference_update(old)
                self.unsubscribe_commands += 1
                await asyncio.wait_for(pubsub.unsubscribe(*old), timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            logger.warning("cluster: subscription change not sent: %s (sent again on reconnect)", exc)

    async def sync(self, timeout: float | None = None) -> None:
        """Return once Redis has every subscription change made so far; raise ClusterUnavailable if down."""
        timeout = self.settings.command_timeout if timeout is None else timeout
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
            await self._apply()
            await self._ping(timeout)
        except (asyncio.TimeoutError, RedisError, OSError) as exc:
            raise ClusterUnavailable(f"cluster unavailable: Redis did not confirm the subscriptions "
                                     f"({self.down_reason or exc or 'timed out'})") from None

    async def _ping(self, timeout: float) -> None:
        """A PING through the pub/sub connection: its answer follows every command sent before it."""
        pubsub = self._pubsub
        if pubsub is None:
            raise ClusterUnavailable("not connected")
        token = b"sync %d" % next(self._tokens)
        waiter = self._waiters[token] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(pubsub.ping(token), timeout)
            await asyncio.wait_for(waiter, timeout)
        finally:
            self._waiters.pop(token, None)

    # -- the connection ------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="coremq-cluster-subscriber")

    async def stop(self) -> None:
        """Stop reading, probing and catching up; close the connection. Bounded in time."""
        tasks = [task for task in [self._task, *self._tasks] if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.command_timeout)
        self._task = None
        await self._drop_connection()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._session()
            except (RedisError, OSError, asyncio.TimeoutError, ClusterUnavailable) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # a bug in handling a message: log it, and connect again
                logger.exception("cluster: subscriber failed")
                reason = repr(exc)
            else:
                reason = "closed"
            if self.connected.is_set():
                delay = 0.1  # it was up: the first retry comes soon
            self.connected.clear()
            self.down_reason = reason
            await self._drop_connection()
            logger.warning("cluster: Redis pub/sub connection lost (%s); reconnecting in %.1fs", reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)
            self.reconnects += 1

    async def _session(self) -> None:
        """Connect, subscribe to everything wanted, catch up, then read and probe until one of them fails."""
        settings = self.settings
        pubsub = self._pubsub = self._pubsub_client.pubsub()
        channels = [self.probe_channel, *self._wanted]
        await asyncio.wait_for(pubsub.subscribe(*channels), settings.connect_timeout + settings.command_timeout)
        self._sent = set(channels[1:])
        self.subscribe_commands += 1
        reader = asyncio.get_running_loop().create_task(self._read(pubsub), name="coremq-cluster-reader")
        try:
            await self._probe_once()  # up only once a message went through Redis to this connection
            self.connected.set()
            self.down_reason = None
            logger.info("cluster: listening to %d channel(s) on Redis", len(channels))
            for queue in list(self._marks):
                self._catch_up(queue, [])
            if self._apply_scheduled is False and set(self._wanted) != self._sent:
                await self._apply()
            prober = asyncio.get_running_loop().create_task(self._probe(), name="coremq-cluster-probe")
            try:
                done, _ = await asyncio.wait({reader, prober}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            finally:
                prober.cancel()
        finally:
            reader.cancel()

    async def _drop_connection(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        self._sent = set()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ClusterUnavailable("the Redis pub/sub connection was lost"))
                waiter.exception()  # retrieved: its waiter may have given up already
        if pubsub is not None:
            try:
                await asyncio.wait_for(pubsub.aclose(), 1.0)
            except (RedisError, OSError, asyncio.TimeoutError):
                pass

    async def _probe(self) -> None:
        """Every ``probe_interval``, :meth:`_probe_once`: raise when one fails."""
        while True:
            await asyncio.sleep(self.settings.probe_interval)
            await self._probe_once()

    async def _probe_once(self) -> None:
        """Publish a token to this node's probe channel; raise ClusterUnavailable unless it comes back in time."""
        timeout = self.settings.probe_timeout
        token = b"probe %d" % next(self._tokens)
        waiter = self._waiters[token] = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._commands.publish(self.probe_channel, token), timeout)
            await asyncio.wait_for(waiter, timeout)
        except (asyncio.TimeoutError, RedisError, OSError) as exc:
            self.probes_failed += 1
            raise ClusterUnavailable(f"the pub/sub probe failed: {exc or f'no answer within {timeout}s'}") from None
        finally:
            self._waiters.pop(token, None)

    async def _read(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            kind = message["type"]
            if kind == "message":
                channel = message["channel"]
                if channel == self.probe_channel:
                    self._wake(message["data"])
                elif channel in self._wanted:
                    self._received(channel, message["data"])
            elif kind == "pong":
                self._wake(message["data"])

    def _wake(self, token: bytes) -> None:
        waiter = self._waiters.get(token)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- order and exactly once ------------------------------------------------------

    def _received(self, channel: bytes, data: bytes) -> None:
        try:
            payload = parse_payload(data)
        except PayloadError as exc:
            logger.warning("cluster: dropped a message on %r: %s", channel, exc)
            return
        self._queues_of.setdefault(channel, set()).add(payload.queue)
        self._accept(payload)

    def _accept(self, payload: Payload) -> None:
        """Deliver what ``payload`` adds after the queue's mark; hold it and read the hole if it leaves one."""
        queue = payload.queue
        held = self._filling.get(queue)
        if held is not None:
            held.append(payload)
            return
        mark = self._marks.get(queue)
        if mark is None:  # the first batch since the node started listening: the mark starts here
            self._emit(Delivery(queue, payload.epoch, payload.first_id, payload.bodies, payload.stamps, payload.origin))
            return
        epoch, last = mark
        if payload.epoch != epoch:
            if payload.first_id == 1:
                self._emit(Delivery(queue, payload.epoch, 1, payload.bodies, payload.stamps, payload.origin,
                                    reset=True))
            else:
                self._catch_up(queue, [payload])
            return
        skip = last + 1 - payload.first_id
        if skip < 0:
            self._catch_up(queue, [payload])
        elif skip < len(payload.bodies):
            self._emit(Delivery(queue, epoch, last + 1, payload.bodies[skip:], payload.stamps, payload.origin))

    def _emit(self, delivery: Delivery) -> None:
        self._marks[delivery.queue] = (delivery.epoch, delivery.last_id)
        if delivery.missing is not None:
            self.missing += delivery.missing[1] - delivery.missing[0] + 1
        try:
            self.on_delivery(delivery)
        except Exception:
            logger.exception("cluster: delivery of %s %d..%d failed", delivery.queue, delivery.first_id,
                             delivery.last_id)

    def _catch_up(self, queue: str, held: list[Payload]) -> None:
        """Read ``queue``'s history after its mark, holding live batches, then deliver both in order."""
        if queue in self._filling:
            self._filling[queue].extend(held)
            return
        self._filling[queue] = list(held)
        self._spawn(self._fill(queue))

    async def _fill(self, queue: str) -> None:
        ok = False
        try:
            await self._read_hole(queue)
            ok = True
        except (RedisError, OSError, ClusterUnavailable, asyncio.TimeoutError) as exc:
            logger.warning("cluster: history of %r not read (%s); read again on the next batch or reconnect",
                           queue, exc)
        finally:
            held = self._filling.pop(queue, None)
        if ok and held and queue in self._marks:
            for payload in held:
                self._accept(payload)

    async def _read_hole(self, queue: str) -> None:
        while queue in self._filling and queue in self._marks:
            epoch, last = self._marks[queue]
            page = await self._read_history(queue, last, 1000)
            if page.epoch is None:
                return  # Redis holds nothing of it now: the next batch starts its new numbering
            reset = page.epoch != epoch
            if reset and last:
                self._marks[queue] = (epoch, 0)  # the numbering restarted: read it from its start
                page = await self._read_history(queue, 0, 1000)
                if page.epoch is None:
                    return
            expected = 1 if reset else last + 1
            if not page.messages:
                if page.last >= expected:  # numbered, but history no longer holds them
                    self._emit(Delivery(queue, page.epoch, page.last + 1, [], b"", reset=reset,
                                        missing=(expected, page.last)))
                    self._marks[queue] = (page.epoch, page.last)
                return
            first_id = page.messages[0][0]
            missing = (expected, first_id - 1) if first_id > expected else None
            for index, (message_id, body, stamps, origin) in enumerate(page.messages):
                if queue not in self._filling:
                    return  # unsubscribed meanwhile
                self._emit(Delivery(queue, page.epoch, message_id, [body], stamps, origin,
                                    reset=reset and index == 0, missing=missing if index == 0 else None))
            if not page.more:
                return

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
