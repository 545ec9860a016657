"""A Channels channel layer on CoreMQ: ``CHANNEL_LAYERS`` switches an app from ``channels_redis`` by one setting.

    CHANNEL_LAYERS = {"default": {"BACKEND": "coremq_broker.layers.CoreMQChannelLayer",
                                  "CONFIG": {"hosts": ["coremq://127.0.0.1:6747"]}}}

Without ``hosts`` the layer talks to the broker of ``settings.COREMQ``. It
speaks to the broker with :class:`~coremq_client.AsyncMessageQueue` (one
connection per event loop) and keeps ``RedisChannelLayer``'s semantics
(``docs/channels.md`` says where they differ). Every channel and group is a
CoreMQ queue, so any CoreMQ client can watch it:

- a **group** is the queue ``<prefix>.group.<group>``: ``group_send`` publishes
  once; each process with members subscribes and hands the message to them;
- a **process-local channel** ``name.<client>!<x>`` lives in the queue
  ``<prefix>.channel.name.<client>!`` that its process subscribes to;
- a **normal channel** is the queue ``<prefix>.channel.<name>``; its messages
  wait in the queue's history until received, and each goes to one receiver:
  a receiver takes a ticket (the id of a publish to ``<prefix>.claim.<name>``)
  and ticket *n* is message *n*.

Messages are msgpack (as ``channels_redis``), base64 in the JSON frame; a
message larger than :data:`PART_BYTES` travels in parts through
``<prefix>.parts.<client>``. Drops (a full channel, an expired group member) are
logged and counted per group and channel: :func:`layer_drops`.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import logging
import os
import socket
import time
import uuid
from collections import Counter, deque
from typing import Any
from urllib.parse import urlsplit

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer

from coremq_client import AsyncMessageQueue, CoreMQError, Gap
from coremq_client.codec import DEFAULT_PORT

from .core.broker import Broker
from .publishing import client_options

__all__ = ["CoreMQChannelLayer", "DROPS_QUEUE", "PART_BYTES", "layer_drops", "reset_layer_drops"]

logger = logging.getLogger(__name__)

#: A message whose msgpack form is larger travels in parts of this size.
PART_BYTES = 384 * 1024
#: Distinct group and channel names the drop counters keep (then counted as "(other)").
MAX_COUNTED_NAMES = 1000
#: The queue where each process publishes its drop counters, at most every REPORT_INTERVAL seconds after a drop.
DROPS_QUEUE = "coremq.layer.drops"
REPORT_INTERVAL = 1.0
_LATEST = 2**62  # "since" beyond any id: a history request that returns only the sequence

_drops = {"channels": Counter(), "groups": Counter(), "expired_members": Counter()}


def _count(kind: str, name: str, amount: int = 1) -> None:
    counter = _drops[kind]
    if name not in counter and len(counter) >= MAX_COUNTED_NAMES:
        name = "(other)"
    counter[name] += amount


def layer_drops() -> dict[str, Any]:
    """Messages this process's layers dropped: per channel and per group (full channels), and expired members."""
    return {"channels": dict(_drops["channels"]), "groups": dict(_drops["groups"]),
            "expired_members": dict(_drops["expired_members"]),
            "total": sum(_drops["channels"].values())}


def reset_layer_drops() -> None:
    for counter in _drops.values():
        counter.clear()


def _pack(message: dict) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def _unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False)


def _address(host: Any) -> tuple[str, int]:
    """``coremq://host:port``, ``host:port``, ``(host, port)`` or ``{"address": ...}`` -> (host, port)."""
    if isinstance(host, dict):
        host = host.get("address", host)
    if isinstance(host, (tuple, list)):
        return str(host[0]), int(host[1])
    text = str(host)
    parts = urlsplit(text if "://" in text else f"coremq://{text}")
    if parts.scheme != "coremq" or not parts.hostname:
        raise ValueError(f"not a CoreMQ address: {host!r} (coremq://host:port)")
    return parts.hostname, DEFAULT_PORT if parts.port is None else parts.port


class _Link:
    """One event loop's connection to the broker, and what arrives on it."""

    def __init__(self, layer: "CoreMQChannelLayer", mq: AsyncMessageQueue) -> None:
        self.layer = layer
        self.mq = mq
        self.loop = asyncio.get_running_loop()
        self.subscribed: set[str] = set()
        self.lock = asyncio.Lock()  # subscription changes
        # normal channels: messages seen by id, and tickets waiting for theirs
        self.seen: dict[str, dict[int, dict]] = collections.defaultdict(dict)
        self.tickets: dict[str, dict[int, asyncio.Future[dict | None]]] = collections.defaultdict(dict)
        # claims whose receive was cancelled, oldest first: the next receive of the queue takes them
        self.unowned: dict[str, deque[asyncio.Future[dict | None]]] = collections.defaultdict(deque)
        self.reader = asyncio.ensure_future(self._read())

    async def subscribe(self, queue: str) -> None:
        async with self.lock:
            if queue not in self.subscribed:
                await self.mq.subscribe(queue)
                self.subscribed.add(queue)

    async def unsubscribe(self, queue: str, still_needed: Any) -> None:
        async with self.lock:
            if queue in self.subscribed and not still_needed():
                self.subscribed.discard(queue)
                await self.mq.unsubscribe(queue)

    async def _read(self) -> None:
        layer = self.layer
        while True:
            try:
                delivery = await self.mq.receive()
            except CoreMQError:
                return
            if delivery is None:
                continue
            try:
                await layer._arrived(self, delivery.queue, delivery.id, delivery.message)
            except Exception:  # one bad message must not stop the layer
                logger.exception("channel layer: could not handle a message on %s", delivery.queue)

    # -- normal channels: ticket n is message n --------------------------------

    def claim(self, queue: str, ticket: int) -> asyncio.Future[dict | None]:
        future: asyncio.Future[dict | None] = self.loop.create_future()
        seen = self.seen[queue]
        while seen and next(iter(seen)) < ticket:  # ids below our newest ticket are other receivers'
            del seen[next(iter(seen))]
        if ticket in seen:
            future.set_result(seen.pop(ticket))
        else:
            self.tickets[queue][ticket] = future
            asyncio.ensure_future(self._look_back(queue, ticket))
        return future

    async def _look_back(self, queue: str, ticket: int) -> None:
        """Message ``ticket`` may have been published before we subscribed: ask the queue's history."""
        try:
            reply = await self.mq.history(queue, since={queue: ticket - 1}, limit=1)
        except CoreMQError:
            return
        future = self.tickets[queue].get(ticket)
        if future is None or future.done():
            return
        for stored in reply.get("history", {}).get(queue, []):
            if stored.get("coremq_id") == ticket:
                self.tickets[queue].pop(ticket, None)
                future.set_result(stored)
                return
        if (reply.get("sequence", {}).get(queue, {}).get("last") or 0) >= ticket:
            logger.warning("channel layer: message %s of %s left the broker's history before it was received "
                           "(raise the queue's history length to the layer's capacity)", ticket, queue)
            self.tickets[queue].pop(ticket, None)
            future.set_result(None)

    def arrived_on_channel(self, queue: str, message_id: int, body: dict) -> None:
        future = self.tickets[queue].pop(message_id, None)
        if future is not None and not future.done():
            future.set_result(body)
        elif future is None:
            seen = self.seen[queue]
            seen[message_id] = body
            while len(seen) > 10_000:
                del seen[next(iter(seen))]


class CoreMQChannelLayer(BaseChannelLayer):
    """The channel layer specification of Channels (with ``groups`` and ``flush``) on a CoreMQ broker.

    Keyword arguments as ``RedisChannelLayer``'s: ``hosts`` (one address,
    ``coremq://host:port``; default ``settings.COREMQ``'s broker), ``prefix``,
    ``expiry`` (seconds a message waits), ``group_expiry`` (seconds a
    membership lasts), ``capacity`` and ``channel_capacity`` (glob or regex ->
    capacity). ``client_options`` are passed to ``AsyncMessageQueue`` (token,
    username, password, ssl...).
    """

    extensions = ["groups", "flush"]

    def __init__(self, hosts: Any = None, prefix: str = "asgi", expiry: int = 60, group_expiry: int = 86400,
                 capacity: int = 100, channel_capacity: dict | None = None,
                 client_options: dict[str, Any] | None = None) -> None:
        super().__init__(expiry=expiry, capacity=capacity, channel_capacity=channel_capacity)
        assert isinstance(prefix, str), "Prefix must be unicode"
        self.channel_capacity = self.compile_capacities(channel_capacity or {})
        self.prefix = prefix
        self.group_expiry = group_expiry
        self.hosts = [hosts] if isinstance(hosts, str) else list(hosts or [])
        if len(self.hosts) > 1:
            raise ValueError("CoreMQChannelLayer takes one broker address in hosts")
        self.client_options = dict(client_options or {})
        self.client_prefix = uuid.uuid4().hex
        self._links: dict[asyncio.AbstractEventLoop, _Link] = {}
        self._home: _Link | None = None  # the link that receives this process's local channels and groups
        self._local_queues: set[str] = set()
        self._inbox: dict[str, deque] = collections.defaultdict(deque)  # non-local name -> unpulled entries
        self._in_flight: Counter = Counter()  # our own sends to our local channels, not yet back
        self._buffers: dict[str, deque] = {}  # local channel -> messages pulled for it
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._receiving = 0
        self._members: dict[str, dict[str, float]] = {}  # group -> channel -> added at
        self._channels_used: set[str] = set()
        self._short_history: set[str] = set()  # normal channels whose backlog outgrew the queue's history
        self._report: asyncio.Future[None] | None = None  # the pending publish of the drop counters

    # -- names -------------------------------------------------------------------

    def _channel_queue(self, non_local: str) -> str:
        return f"{self.prefix}.channel.{non_local}"

    def _group_queue(self, group: str) -> str:
        return f"{self.prefix}.group.{group}"

    def _is_ours(self, channel: str) -> bool:
        return "!" in channel and self.non_local_name(channel).endswith(f".{self.client_prefix}!")

    # -- connections -------------------------------------------------------------

    def _client(self) -> AsyncMessageQueue:
        if self.hosts:
            host, port = _address(self.hosts[0])
            options = {"host": host, "port": port, **self.client_options}
        else:  # settings.COREMQ's broker; under run_coremq, the one this process serves (its --port too)
            broker = Broker.running()
            address = (broker.host, broker.port) if broker is not None and broker.port else (None, None)
            options = {**client_options(*address), **self.client_options}
        options.setdefault("max_pending", None)
        options.setdefault("on_gap", self._on_gap)
        # echo: a process that sends to a group (or channel) it also receives gets its own messages
        options["options"] = {**options.get("options", {}), "echo": True}
        return AsyncMessageQueue(**options)

    def _on_gap(self, gap: Gap) -> None:
        """A queue's numbering restarted (a broker restart): ids seen before no longer match tickets."""
        if gap.reset:
            for link in list(self._links.values()):
                link.seen.pop(gap.queue, None)

    async def _link(self) -> _Link:
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            for dead in [other for other in self._links if other.is_closed()]:
                del self._links[dead]
            mq = self._client()
            await mq.connect()
            link = self._links.get(loop)  # another coroutine may have connected meanwhile
            if link is None:
                link = self._links[loop] = _Link(self, mq)
                self._close_with(loop)
            else:
                await mq.close()
        return link

    def _close_with(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close this loop's connection when the loop closes (async_to_sync's loops come and go)."""
        original = loop.close

        def close(*args: Any, **kwargs: Any) -> None:
            link = self._links.get(loop)
            if link is not None and not loop.is_running():
                loop.run_until_complete(self.close())
            loop.close = original  # type: ignore[method-assign]
            original(*args, **kwargs)

        try:
            loop.close = close  # type: ignore[method-assign]
        except AttributeError:  # a loop class that takes no attributes (uvloop): it keeps the connection
            pass

    async def _home_link(self) -> _Link:
        """The link of this loop, made home if there is none (or its loop has closed)."""
        home = self._home
        if home is not None and not home.loop.is_closed():
            if home.loop is not asyncio.get_running_loop():
                raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
            return home
        link = await self._link()
        if self._home is not link:
            self._home = link
            for queue in sorted(self._local_queues) + [self._group_queue(g) for g in self._members]:
                await link.subscribe(queue)
        return link

    async def _on_home(self, coroutine_function: Any, *args: Any) -> Any:
        """Run a subscription change on the home loop, from whichever loop we are on."""
        home = self._home
        if home is None or home.loop.is_closed() or home.loop is asyncio.get_running_loop():
            await self._home_link()
            return await coroutine_function(*args)
        if not home.loop.is_running():
            raise RuntimeError("the event loop that receives this layer's channels is not running")
        future = asyncio.run_coroutine_threadsafe(coroutine_function(*args), home.loop)
        return await asyncio.wrap_future(future)

    # -- encoding ------------------------------------------------------------------

    async def _body(self, link: _Link, message: dict) -> dict[str, Any]:
        data = _pack(message)
        body: dict[str, Any] = {"t": time.time()}
        if len(data) <= PART_BYTES:
            body["m"] = binascii.b2a_base64(data, newline=False).decode("ascii")
            return body
        parts_queue = f"{self.prefix}.parts.{self.client_prefix}"
        ids = []
        for start in range(0, len(data), PART_BYTES):
            chunk = binascii.b2a_base64(data[start:start + PART_BYTES], newline=False).decode("ascii")
            ids.append((await link.mq.publish(parts_queue, {"part": chunk}))["id"])
        body.update(pq=parts_queue, p=ids)
        return body

    async def _message(self, link: _Link, body: dict) -> dict | None:
        """The message of a body, or None when it expired or its parts are lost."""
        sent = body.get("t")
        if not isinstance(sent, (int, float)) or time.time() - sent > self.expiry:
            return None
        if "m" in body:
            try:
                message = _unpack(binascii.a2b_base64(body["m"]))
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                logger.warning("channel layer: a message that cannot be decoded was skipped: %s", exc)
                return None
            return message if isinstance(message, dict) else None
        if not isinstance(body.get("p"), list) or not isinstance(body.get("pq"), str):
            logger.warning("channel layer: a message that no channel layer sent was skipped: %.200r", body)
            return None
        chunks = []
        for part_id in body["p"]:
            reply = await link.mq.history(body["pq"], since={body["pq"]: part_id - 1}, limit=1)
            stored = [m for m in reply["history"].get(body["pq"], []) if m.get("coremq_id") == part_id]
            if not stored:
                logger.warning("channel layer: a part of a large message left %s's history", body["pq"])
                return None
            chunks.append(binascii.a2b_base64(stored[0]["part"]))
        return _unpack(b"".join(chunks))

    # -- the channel layer API -------------------------------------------------------

    async def send(self, channel: str, message: dict) -> None:
        """Send a message onto a channel; ChannelFull when it holds its capacity already."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        capacity = self.get_capacity(channel)
        link = await self._link()
        if "!" in channel:
            non_local = self.non_local_name(channel)
            ours = self._is_ours(channel)
            if ours:
                await self._watch_local(non_local)
                self._expire_inbox(non_local)
                if len(self._inbox[non_local]) + self._in_flight[non_local] >= capacity:
                    raise ChannelFull()
            body = await self._body(link, message)
            body["c"] = channel
            if ours:
                body["f"] = 1
                self._in_flight[non_local] += 1
            try:
                await link.mq.publish(self._channel_queue(non_local), body)
            except BaseException:
                if ours:
                    self._in_flight[non_local] -= 1
                raise
            return
        queue = self._channel_queue(channel)
        self._channels_used.add(channel)
        reply = await link.mq.history(queue, f"{self.prefix}.claim.{channel}", since=_LATEST)
        sequence = reply.get("sequence", {})
        last, first = sequence.get(queue, {}).get("last") or 0, sequence.get(queue, {}).get("first")
        claimed = sequence.get(f"{self.prefix}.claim.{channel}", {}).get("last") or 0
        waiting = last - claimed
        if waiting > 0 and first is not None and first > claimed + 1 and channel not in self._short_history:
            self._short_history.add(channel)
            logger.warning("channel layer: %s messages of channel %s left the broker's history unreceived: give "
                           "queue %s a history of at least the capacity (%s)", first - claimed - 1, channel, queue,
                           capacity)
        if waiting >= capacity:
            raise ChannelFull()
        await link.mq.publish(queue, await self._body(link, message))

    async def receive(self, channel: str) -> dict:
        """The first message on the channel; a cancelled receive loses no message."""
        assert self.require_valid_channel_name(channel)
        if "!" in channel:
            assert self._is_ours(channel), "Wrong client prefix"
            return await self._receive_local(channel)
        return await self._receive_normal(channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name, received by this process."""
        channel = f"{prefix}.{self.client_prefix}!{uuid.uuid4().hex}"
        await self._watch_local(self.non_local_name(channel))
        return channel

    async def _watch_local(self, non_local: str) -> None:
        queue = self._channel_queue(non_local)
        if queue not in self._local_queues:
            self._local_queues.add(queue)
            await self._on_home(self._subscribe_home, queue)

    async def _subscribe_home(self, queue: str) -> None:
        await (await self._home_link()).subscribe(queue)

    async def _receive_local(self, channel: str) -> dict:
        await self._watch_local(self.non_local_name(channel))
        loop = asyncio.get_running_loop()
        self._receiving += 1
        try:
            self._pull()
            while True:
                buffer = self._buffers.get(channel)
                if buffer:
                    message = buffer.popleft()
                    if not buffer:
                        del self._buffers[channel]
                    return message
                waiter = loop.create_future()
                self._waiters.setdefault(channel, []).append(waiter)
                try:
                    await waiter  # only a signal: the message stays in the buffer, so cancelling loses none
                finally:
                    waiters = self._waiters.get(channel, [])
                    if waiter in waiters:
                        waiters.remove(waiter)
                    if not waiters:
                        self._waiters.pop(channel, None)
        finally:
            self._receiving -= 1

    async def _receive_normal(self, channel: str) -> dict:
        """Take a ticket (or the claim of a cancelled receive, oldest first) and wait for its message."""
        queue = self._channel_queue(channel)
        self._channels_used.add(channel)
        link = await self._link()
        await link.subscribe(queue)
        unowned = link.unowned[queue]
        while True:
            if unowned:
                claimed = unowned.popleft()
            else:
                claimed = asyncio.ensure_future(self._claim(link, channel, queue))
            try:
                body = await asyncio.shield(claimed)
            except asyncio.CancelledError:
                if not claimed.done() or (not claimed.cancelled() and claimed.exception() is None
                                          and claimed.result() is not None):
                    unowned.appendleft(claimed)  # its message goes to the next receive
                raise
            if body is not None:
                message = await self._message(link, body)
                if message is not None:
                    return message

    async def _claim(self, link: _Link, channel: str, queue: str) -> dict | None:
        ticket = (await link.mq.publish(f"{self.prefix}.claim.{channel}", {}))["id"]
        return await link.claim(queue, ticket)

    # -- arrivals ----------------------------------------------------------------------

    async def _arrived(self, link: _Link, queue: str, message_id: int | None, body: Any) -> None:
        if not isinstance(body, dict):
            return
        if queue.startswith(f"{self.prefix}.group."):
            await self._group_arrived(link, queue, body)
        elif queue in self._local_queues:
            non_local = queue[len(self.prefix) + len(".channel."):]
            if body.get("f"):
                self._in_flight[non_local] -= 1
            message = await self._message(link, body)
            if message is not None:
                channel = body["c"]
                self._deliver(non_local, [channel] if isinstance(channel, str) else channel, message, None)
        elif message_id is not None:
            link.arrived_on_channel(queue, message_id, body)

    async def _group_arrived(self, link: _Link, queue: str, body: dict) -> None:
        group = queue[len(self.prefix) + len(".group."):]
        members = self._members.get(group)
        if "discard" in body:
            if members is not None:
                members.pop(body["discard"], None)
            return
        if not members or "t" not in body:
            return
        now = time.time()
        for channel in [c for c, added in members.items() if now - added > self.group_expiry]:
            del members[channel]
            _count("expired_members", group)
            self._report_drops()
        message = await self._message(link, body)
        if message is None or not members:
            return
        local: dict[str, list[str]] = collections.defaultdict(list)
        for channel in list(members):
            if self._is_ours(channel):
                local[self.non_local_name(channel)].append(channel)
            else:
                asyncio.ensure_future(self._forward(group, channel, message))
        for non_local, channels in local.items():
            self._deliver(non_local, channels, message, group)

    async def _forward(self, group: str, channel: str, message: dict) -> None:
        """A member this process added for another process (or a normal channel): send it on."""
        try:
            await self.send(channel, message)
        except ChannelFull:
            self._dropped(group, [channel])
        except CoreMQError as exc:
            logger.warning("channel layer: could not forward group %s's message to %s: %s", group, channel, exc)

    def _deliver(self, non_local: str, channels: list[str], message: dict, group: str | None) -> None:
        """A message for local channels: to their buffers while a receive runs, else to the inbox."""
        if not self._receiving:
            inbox = self._inbox[non_local]
            self._expire_inbox(non_local)
            if len(inbox) >= self.get_capacity(channels[0]):
                self._dropped(group, channels)
                return
            inbox.append((time.time(), channels, message))
            return
        self._route(channels, message, group)

    def _route(self, channels: list[str], message: dict, group: str | None) -> None:
        full = []
        for channel in channels:
            buffer = self._buffers.setdefault(channel, deque())
            if len(buffer) >= self.get_capacity(channel):
                full.append(channel)
                continue
            buffer.append(message)
            for waiter in self._waiters.get(channel, [])[:1]:
                if not waiter.done():
                    waiter.set_result(None)
        if full:
            self._dropped(group, full)

    def _pull(self) -> None:
        """A receive runs: every message waiting in the inbox goes to its channels' buffers."""
        for non_local in list(self._inbox):
            self._expire_inbox(non_local)
            inbox = self._inbox.pop(non_local)
            for _, channels, message in inbox:
                self._route(channels, message, None)

    def _expire_inbox(self, non_local: str) -> None:
        inbox = self._inbox.get(non_local)
        cutoff = time.time() - self.expiry
        while inbox and inbox[0][0] < cutoff:
            inbox.popleft()

    def _dropped(self, group: str | None, channels: list[str]) -> None:
        for channel in channels:
            _count("channels", channel)
        self._report_drops()
        if group is not None:
            _count("groups", group, len(channels))
            logger.info("%s of the channels of group %s over capacity: message dropped", len(channels), group)
        else:
            logger.info("channel %s over capacity: message dropped", ", ".join(channels))

    def _report_drops(self) -> None:
        """Publish this process's counters to DROPS_QUEUE soon (once for a burst of drops), for other processes."""
        if self._report is None or self._report.done():
            self._report = asyncio.ensure_future(self._publish_drops())

    async def _publish_drops(self) -> None:
        await asyncio.sleep(REPORT_INTERVAL)
        report = {"process": f"{socket.gethostname()}:{os.getpid()}", "layer": self.client_prefix, **layer_drops()}
        try:
            await (await self._link()).mq.publish(DROPS_QUEUE, report, reply=False)
        except CoreMQError as exc:
            logger.warning("channel layer: could not publish the drop counters: %s", exc)

    # -- groups --------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add a channel to a group (again: its membership starts anew)."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        self._members.setdefault(group, {})[channel] = time.time()
        await self._on_home(self._subscribe_home, self._group_queue(group))

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove a channel from a group, in every process that holds it; no error if it is not there."""
        assert self.require_valid_group_name(group), "Group name not valid"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        members = self._members.get(group)
        if members is not None:
            members.pop(channel, None)
        link = await self._link()
        await link.mq.publish(self._group_queue(group), {"discard": channel})
        if members is not None and not members:
            del self._members[group]
            home = self._home
            if home is not None and not home.loop.is_closed():
                await self._on_home(home.unsubscribe, self._group_queue(group), lambda: group in self._members)

    async def group_send(self, group: str, message: dict) -> None:
        """Send a message to every member of a group: one publish to its queue; never ChannelFull."""
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_group_name(group), "Group name not valid"
        link = await self._link()
        await link.mq.publish(self._group_queue(group), await self._body(link, message))

    # -- flush and close ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Forget this layer's messages, buffers and memberships; the backlog of the normal channels it used is
        claimed (so nobody receives it)."""
        link = await self._link()
        for channel in sorted(self._channels_used):
            queue, claims = self._channel_queue(channel), f"{self.prefix}.claim.{channel}"
            sequence = (await link.mq.history(queue, claims, since=_LATEST)).get("sequence", {})
            for _ in range((sequence.get(queue, {}).get("last") or 0) - (sequence.get(claims, {}).get("last") or 0)):
                await link.mq.publish(claims, {}, reply=False)
        self._members.clear()
        self._inbox.clear()
        self._buffers.clear()
        self._channels_used.clear()
        await self.close()

    async def close(self) -> None:
        """Close this loop's connection (others close with their loops); the layer reconnects when used again."""
        loop = asyncio.get_running_loop()
        link = self._links.pop(loop, None)
        if self._report is not None and not self._report.done() and self._report.get_loop() is loop:
            self._report.cancel()
        if link is None:
            return
        if self._home is link:
            self._home = None
        await link.mq.close()
        link.reader.cancel()
        for futures in link.tickets.values():
            for future in futures.values():
                future.cancel()

    def __str__(self) -> str:
        return f"{self.__class__.__name__}(hosts={self.hosts or 'settings.COREMQ'})"
