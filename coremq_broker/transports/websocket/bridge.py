"""The bridge: one link to the broker per web process, fanned out to that process's WebSockets.

Browsers do not each open a TCP connection to the broker. A web process holds
one :class:`BrokerLink` (in-process beside the broker, or a remote client; see
:mod:`coremq_broker.transports.websocket.links`) and multiplexes every WebSocket over it:

- **Subscriptions** are counted locally: the first browser on a queue makes
  the one upstream subscription, the last one to leave ends it. A delivered
  message is turned into the browser's JSON text **once** and handed to every
  local subscriber of its queue, in order, by a single pump task.
- **Identity**: browser number ``n`` of a bridge whose broker connection is
  ``<id>`` is ``<id>/<n>``. The broker keeps such sub-address queues private
  to the bridge and delivers them to it unasked; the bridge routes them to
  browser ``n`` and stops each browser from touching another's. A browser's
  publishes carry its sub-address as ``coremq_sender``. When the link
  reconnects, ``<id>`` changes and every browser gets a new ``welcome``.
- **Order**: everything sent to browsers (answers, errors, messages) goes
  through one outbox, so a browser sees an answer after every message that
  the broker delivered before it.
- **Access**: each browser has a :class:`~coremq_broker.core.access.Principal`
  (its Django user, or the user of the token it presented), and every
  subscribe, publish and history request is checked with the same access
  policy as the broker's TCP clients (``access()``, the live snapshot); the
  broker lets the bridge's own connection through as a relay. When the
  policy changes (the link calls :meth:`Bridge.enforce` from the broker's, or
  the web process's, policy watcher), browsers whose credentials were revoked
  are closed and subscriptions it no longer allows end: the same check
  (``AccessPolicy.ended``) as for TCP connections.

Nothing here imports Django.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
from collections import deque
from typing import Any, Awaitable, Callable, ClassVar, Iterable, Mapping, Protocol

from coremq_client import protocol as P
from coremq_client.codec import JSONCodec
from coremq_client.errors import CoreMQError

from ...core.access import ANONYMOUS, AccessPolicy, Principal, denial, subscription_limit
from .protocol import browser_number, error_frame, message_entry, message_frame, text_frame

__all__ = ["Bridge", "BridgeError", "BrokerLink", "Browser", "FrameWriter", "Outgoing", "CLOSE_CREDENTIALS",
           "CLOSE_SERVICE_RESTART", "CLOSE_TRY_AGAIN_LATER"]

logger = logging.getLogger("coremq.websocket")

# WebSocket close codes sent to browsers. daphne (autobahn) sends only 1000 and 3000-4999, so
# the codes of RFC 6455's 1008, 1012 and 1013 are given in the private range as 3000 + theirs.
#: The browser's credentials were revoked, or its ``?token=`` does not log in: do not reconnect as it is.
CLOSE_CREDENTIALS = 4008
#: The link to the broker ended (the broker or the web process is shutting down or restarting, or an
#: administrator disconnected the bridge): reconnect.
CLOSE_SERVICE_RESTART = 4012
#: No link to the broker can be had now (the broker is unreachable): try again later.
CLOSE_TRY_AGAIN_LATER = 4013

#: A ``since`` above any message id: the history answer then holds only the sequence.
_NEWEST = 2**53

_ALLOW_ALL = AccessPolicy()

ASGISend = Callable[[dict], Awaitable[None]]


class BridgeError(CoreMQError):
    """A browser's request was refused by the bridge; the text goes into the error frame."""


class FrameWriter(Protocol):
    """Writes whole pre-encoded WebSocket frames to a browser's socket (see :mod:`.daphne`)."""

    def write(self, frame: bytes) -> bool:
        """Queue ``frame``; False when the browser has fallen too far behind (a slow consumer)."""

    def abort(self) -> None: ...


class Browser:
    """One WebSocket as the bridge sees it: its number, how to reach it, and its subscriptions.

    ``send`` is the ASGI server's own send; ``writer``, when the server allows
    it, takes frames encoded once for all browsers.
    """

    __slots__ = ("number", "send", "writer", "user", "principal", "queues", "open", "address")

    def __init__(self, number: int, send: ASGISend, user: Any = None, writer: FrameWriter | None = None,
                 principal: Principal = ANONYMOUS) -> None:
        self.number = number
        self.send = send
        self.writer = writer
        self.user = user
        self.principal = principal
        self.queues: set[str] = set()
        self.open = True
        #: The client address it counts against (anonymous browsers only; "" for none).
        self.address = ""

    def __repr__(self) -> str:
        return f"<Browser {self.number} queues={sorted(self.queues)}>"


class Outgoing:
    """One frame for one or many browsers: JSON bytes, made into an ASGI message or a WebSocket frame once."""

    __slots__ = ("data", "close", "_asgi", "_frame")

    def __init__(self, data: bytes, close: int | None = None) -> None:
        self.data = data
        self.close = close
        self._asgi: dict | None = None
        self._frame: bytes | None = None

    def asgi(self) -> dict:
        if self._asgi is None:
            self._asgi = ({"type": "websocket.close", "code": self.close} if self.close is not None
                          else {"type": "websocket.send", "text": self.data.decode()})
        return self._asgi

    def frame(self) -> bytes:
        if self._frame is None:
            self._frame = text_frame(self.data)
        return self._frame


class BrokerLink(abc.ABC):
    """The bridge's one connection to the broker.

    :meth:`start` connects and calls ``bridge.connected(connection_id,
    epoch)`` before it returns, and again after every reconnection; every
    delivered message goes to ``bridge.delivered(queue, stored)``; a link
    that can never deliver again calls ``bridge.lost(reason)``. Requests
    raise :class:`~coremq_client.errors.ServerError` when the broker refuses
    them and :class:`~coremq_client.errors.ConnectionClosed` when it is gone.
    """

    kind: ClassVar[str]

    @abc.abstractmethod
    async def start(self, bridge: "Bridge") -> None: ...

    @abc.abstractmethod
    async def subscribe(self, queues: list[str]) -> None: ...

    @abc.abstractmethod
    async def unsubscribe(self, queues: list[str]) -> None: ...

    @abc.abstractmethod
    async def publish(self, queue: str, stored: dict) -> dict:
        """Publish ``stored`` (stamped with the browser's sender); return the broker's reply (with ``id``)."""

    @abc.abstractmethod
    async def history(self, since: Mapping[str, int | None], limit: int | None = None) -> dict:
        """The broker's history reply: ``{"history": {...}, "sequence": {...}}``, and ``more`` if cut short."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class Bridge:
    """Local fan-out of one :class:`BrokerLink` to many browsers; see the module docstring.

    ``info`` is added to every welcome frame (server name, version, limits).
    ``max_subscriptions`` bounds the queues one browser may subscribe to.
    ``access()`` returns the access policy in force (by default everything is
    allowed); ``on_close`` callbacks run once when the bridge ends.
    """

    def __init__(self, link: BrokerLink, *, codec: JSONCodec | None = None, max_subscriptions: int = 1000,
                 info: Mapping[str, Any] | None = None, access: Callable[[], AccessPolicy] | None = None) -> None:
        self.link = link
        self.access = access or (lambda: _ALLOW_ALL)
        self.on_close: list[Callable[[], None]] = []
        self.denials = 0
        self._enforced: AccessPolicy | None = None
        self.codec = codec or JSONCodec()
        self.max_subscriptions = max_subscriptions
        self.info = dict(info or {})
        self.connection_id: str | None = None
        self.epoch: str | None = None
        self.closed = False
        self.browsers: dict[int, Browser] = {}
        self.delivered_count = 0
        self.slow_consumers = 0
        #: Messages to a browser's address that no open browser has (closed, or never given).
        self.dead_letters = 0
        #: Anonymous browsers per client address, and the ones refused for being one too many.
        self._anonymous: dict[str, int] = {}
        self.refused_per_address = 0
        self._numbers = itertools.count(1)
        self._private_prefix = "\0"  # matches no queue until connected
        self._local: dict[str, dict[Browser, None]] = {}  # queue -> browsers, insertion-ordered
        self._fanout: dict[str, tuple[Browser, ...]] = {}  # the same as tuples, rebuilt on change
        self._upstream: dict[str, asyncio.Future[None]] = {}  # queue -> its upstream subscription
        self._outbox: deque[tuple[Outgoing, Iterable[Browser]]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Connect the link and start the pump."""
        loop = asyncio.get_running_loop()
        self._pump_task = loop.create_task(self._pump(), name="coremq-websocket-pump")
        await self.link.start(self)

    async def close(self) -> None:
        """Close the link; browsers still attached are closed after what is queued for them. Idempotent."""
        if not self.closed:
            self.lost("the web server is shutting down")
        await self.link.close()
        if self._pump_task is not None:
            self._enqueue(Outgoing(b""), ())  # wakes the pump, which stops once the outbox is empty
            try:
                await asyncio.wait_for(asyncio.shield(self._pump_task), 5)
            except TimeoutError:
                self._pump_task.cancel()

    # -- called by the link ----------------------------------------------------

    def connected(self, connection_id: str, epoch: str) -> None:
        """The link (re)connected as ``connection_id``: every browser gets a new welcome."""
        self.connection_id = connection_id
        self.epoch = epoch
        self._private_prefix = connection_id + "/"
        for browser in self.browsers.values():
            self.send(browser, self._welcome(browser))

    def delivered(self, queue: str, stored: Any) -> None:
        """A message from the broker: encode it once, queue it for every local subscriber of ``queue``."""
        if self.access() is not self._enforced:
            self.enforce()  # a new policy: no message goes where it no longer may
        browsers = self._fanout.get(queue)
        if browsers is None:
            browsers = self._route(queue)
            if not browsers:
                if queue.startswith(self._private_prefix):
                    self.dead_letters += 1  # to a browser that has closed, or to no browser's address
                return
        self.delivered_count += len(browsers)
        self._enqueue(Outgoing(self.codec.dumps(message_frame(queue, stored))), browsers)

    def dropped(self, queue: str, first: int | None, last: int | None) -> None:
        """The broker dropped ids ``first``..``last`` of ``queue`` on their way to this bridge (a slow link).

        Every local subscriber gets a ``dropped`` frame; ``coremq.js`` fetches
        the ids it lacks from history and reports as a gap only what history
        no longer holds.
        """
        browsers = self._fanout.get(queue)
        if browsers is None:
            browsers = self._route(queue)
        if browsers:
            frame = {"type": "dropped", "queue": queue, "first": first, "last": last}
            self._enqueue(Outgoing(self.codec.dumps(frame)), browsers)

    def lost(self, reason: str) -> None:
        """The link can never deliver again: tell every browser and close it (they reconnect to a new bridge)."""
        if self.closed:
            return
        self.closed = True
        logger.info("WebSocket bridge %s closed: %s", self.connection_id, reason)
        for callback in self.on_close:
            callback()
        close = Outgoing(b"", close=CLOSE_SERVICE_RESTART)
        for browser in list(self.browsers.values()):
            self.send(browser, error_frame(f"connection to the broker lost: {reason}"))
            self._enqueue(close, (browser,))

    # -- browsers --------------------------------------------------------------

    def admit(self, address: str, principal: Principal, limit: int) -> str | None:
        """The refusal's text if one more anonymous browser from ``address`` is one too many, else None.

        ``MAX_CONNECTIONS_PER_ADDRESS`` for this process's browsers, as the broker
        counts TCP clients: browsers of a logged-in user are not counted, 0 sets no limit.
        """
        if not limit or not address or principal.authenticated or self._anonymous.get(address, 0) < limit:
            return None
        self.refused_per_address += 1
        return f"too many connections from {address}: limit is {limit}"

    def attach(self, send: ASGISend, user: Any = None, writer: FrameWriter | None = None,
               principal: Principal = ANONYMOUS, address: str = "") -> Browser:
        """Register a WebSocket; it gets its welcome once the link is connected.

        An anonymous one counts against ``address`` (see :meth:`admit`) until it is detached.
        """
        if self.closed:
            raise BridgeError("the bridge is closed")
        browser = Browser(next(self._numbers), send, user, writer, principal)
        if address and not principal.authenticated:
            browser.address = address
            self._anonymous[address] = self._anonymous.get(address, 0) + 1
        self.browsers[browser.number] = browser
        if self.connection_id is not None:
            self.send(browser, self._welcome(browser))
        return browser

    def detach(self, browser: Browser) -> None:
        """Forget a WebSocket that closed, and its subscriptions."""
        if self.browsers.pop(browser.number, None) is None:
            return
        browser.open = False
        if browser.address:
            left = self._anonymous[browser.address] - 1
            if left:
                self._anonymous[browser.address] = left
            else:
                del self._anonymous[browser.address]
        for name in browser.queues:
            self._drop_local(name, browser)
        browser.queues.clear()

    def browser_id(self, browser: Browser) -> str:
        """The browser's connection id, ``<bridge connection id>/<number>``."""
        return f"{self.connection_id}/{browser.number}"

    def send(self, browser: Browser, frame: Mapping[str, Any]) -> None:
        """Queue one JSON frame for ``browser``, behind what is already queued for it."""
        self._enqueue(Outgoing(self.codec.dumps(frame)), (browser,))

    def _welcome(self, browser: Browser) -> dict[str, Any]:
        return {"type": "welcome", "connection_id": self.browser_id(browser), "epoch": self.epoch, **self.info}

    # -- requests --------------------------------------------------------------

    async def subscribe(self, browser: Browser, queues: Iterable[str]) -> dict[str, Any]:
        """Subscribe ``browser`` to ``queues``; return their ``sequence`` (``first``/``last`` id) as of now.

        All or nothing: if the broker refuses one queue, none is subscribed.
        A browser's own id is always subscribed; another's is refused.
        """
        names = list(queues)
        own = self.browser_id(browser)
        for name in names:
            self._check_private(browser, "subscribe", name)
        public = [name for name in names if name != own]
        new = [name for name in public if name not in browser.queues]
        refusal = subscription_limit(len(browser.queues), len(new), self.max_subscriptions)
        if refusal is not None:
            raise BridgeError(refusal)
        for name in new:
            browser.queues.add(name)
            self._local.setdefault(name, {})[browser] = None
            self._fanout.pop(name, None)
        try:
            # Both requests leave at once, the subscription first: one round trip.
            _, reply = await asyncio.gather(self._subscribe_upstream(public),
                                            self.link.history(dict.fromkeys(names, _NEWEST)))
        except BaseException:
            for name in new:
                if name in browser.queues:
                    browser.queues.discard(name)
                    self._drop_local(name, browser)
            raise
        return reply.get("sequence", {})

    async def unsubscribe(self, browser: Browser, queues: Iterable[str]) -> None:
        self._end_subscriptions(browser, [name for name in queues if name in browser.queues])

    async def publish(self, browser: Browser, queue: str, message: Any) -> dict:
        """Publish as the browser (its id is the sender); return the broker's reply."""
        if queue == self.connection_id:
            raise BridgeError(denial("publish", queue, "the bridge's own queue"))
        stored = dict(message) if isinstance(message, dict) else P.wrap(message)
        stored[P.SENDER] = self.browser_id(browser)
        return await self.link.publish(queue, stored)

    async def history(self, browser: Browser, since: Mapping[str, int | None],
                      limit: int | None = None) -> dict[str, Any]:
        """``{"history": {queue: [entry, ...]}, "sequence": {...}}`` with entries as browsers see messages.

        With ``limit`` the answer is one page, at most ``limit`` messages per
        queue, and ``more`` names the queues to ask again; without, the whole
        history in one answer.
        """
        for name in since:
            self._check_private(browser, "history", name)
        reply = await self.link.history(since, limit)
        sequence = reply.get("sequence", {})
        history = {name: list(messages) for name, messages in (reply.get("history") or {}).items()}
        more = reply.get("more") if isinstance(reply.get("more"), dict) else None
        # The broker pages a long history by size (no reply is larger than a frame): without a limit
        # the queues named in "more" are asked again from the last id each one got, until it is whole.
        while limit is None and more:
            after = {name: history[name][-1].get(P.ID) if history.get(name) else since.get(name) for name in more}
            reply = await self.link.history(after)
            more = reply.get("more") if isinstance(reply.get("more"), dict) else None
            pages = reply.get("history") or {}
            if not any(pages.values()):
                break  # the broker always sends something with "more"; never loop on nothing
            for name, messages in pages.items():
                history.setdefault(name, []).extend(messages)
        answer: dict[str, Any] = {
            "history": {name: [message_entry(m) for m in messages] for name, messages in history.items()},
            "sequence": sequence,
        }
        if more:
            answer["more"] = more
        return answer

    def check(self, browser: Browser, action: str, queues: Iterable[str]) -> None:
        """Raise :class:`BridgeError` unless the policy lets ``browser`` ``action`` every one of ``queues``.

        ``action`` is ``publish``, ``subscribe`` or ``history``; the browser's
        own id is always its own. The refusal names the action and the queue only.
        """
        policy = self.access()
        if policy.is_revoked(browser.principal):
            raise BridgeError("credentials revoked")
        own = self.browser_id(browser)
        for name in queues:
            if name != own and not policy.allows(browser, action, name):  # type: ignore[arg-type]
                self.denials += 1
                logger.warning("WebSocket browser %s (%s): permission denied: %s on queue %r", own,
                               browser.principal.username or "anonymous", action, name)
                raise BridgeError(denial(action, name))

    def enforce(self, browser: Browser | None = None) -> None:
        """Hold the browsers (or one) to the policy in force: close revoked ones, end subscriptions it no longer allows.

        The link calls it on every change of the policy; a message that finds a
        newer policy than the last enforced one calls it first, too.
        """
        policy = self.access()
        if browser is None:
            self._enforced = policy
        for each in (browser,) if browser is not None else list(self.browsers.values()):
            if each.principal is not ANONYMOUS and policy.is_revoked(each.principal):
                logger.warning("WebSocket browser %s: credentials of %r revoked", self.browser_id(each),
                               each.principal.username)
                self._end_subscriptions(each, each.queues)
                self.send(each, error_frame("credentials revoked"))
                self._enqueue(Outgoing(b"", close=CLOSE_CREDENTIALS), (each,))
                continue
            ended = policy.ended(each, each.queues)
            self._end_subscriptions(each, ended)
            for name in ended:
                self.denials += 1
                self.send(each, error_frame(denial("subscribe", name, "subscription ended"), queue=name))

    def _end_subscriptions(self, browser: Browser, names: Iterable[str]) -> None:
        for name in list(names):
            browser.queues.discard(name)
            self._drop_local(name, browser)

    def _check_private(self, browser: Browser, action: str, name: str) -> None:
        """Refuse the bridge's own queue and other browsers' sub-addresses."""
        if name == self.connection_id or (name.startswith(self._private_prefix) and name != self.browser_id(browser)):
            raise BridgeError(denial(action, name, "another connection's private queue"))

    # -- upstream subscriptions ----------------------------------------------------

    async def _subscribe_upstream(self, names: list[str]) -> None:
        """Make sure the link is subscribed to ``names``: one request for those not yet asked for."""
        missing = [name for name in names if name not in self._upstream]
        waiting = {self._upstream[name] for name in names if name in self._upstream}
        if missing:
            future = asyncio.get_running_loop().create_future()
            for name in missing:
                self._upstream[name] = future
            try:
                await self.link.subscribe(missing)
            except BaseException as exc:
                for name in missing:
                    if self._upstream.get(name) is future:
                        del self._upstream[name]
                future.set_exception(exc if isinstance(exc, Exception) else CoreMQError("cancelled"))
                future.exception()  # retrieved: other waiters get it through shield() below
                raise
            future.set_result(None)
        for other in waiting:
            await asyncio.shield(other)

    def _drop_local(self, name: str, browser: Browser) -> None:
        local = self._local.get(name)
        if local is None:
            return
        local.pop(browser, None)
        self._fanout.pop(name, None)
        if not local:
            del self._local[name]
            if self._upstream.pop(name, None) is not None and not self.closed:
                self._spawn(self._unsubscribe_upstream(name))

    async def _unsubscribe_upstream(self, name: str) -> None:
        try:
            await self.link.unsubscribe([name])
        except CoreMQError as exc:
            logger.info("WebSocket bridge: unsubscribing from %r failed: %s", name, exc)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- fan-out -------------------------------------------------------------------

    def _route(self, queue: str) -> tuple[Browser, ...]:
        """Who gets a message of ``queue``: its local subscribers (cached), or one browser's sub-address."""
        if queue.startswith(self._private_prefix):
            number = browser_number(queue[len(self._private_prefix):])
            browser = self.browsers.get(number) if number is not None else None
            return (browser,) if browser is not None else ()
        local = self._local.get(queue)
        if not local:
            return ()
        browsers = self._fanout[queue] = tuple(local)
        return browsers

    def _enqueue(self, outgoing: Outgoing, browsers: Iterable[Browser]) -> None:
        self._outbox.append((outgoing, browsers))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _pump(self) -> None:
        """Send what is queued, in order. ASGI servers' ``send`` does not block (daphne's writes and returns)."""
        outbox = self._outbox
        loop = asyncio.get_running_loop()
        while True:
            if not outbox:
                if self.closed:
                    return
                self._waiter = loop.create_future()
                await self._waiter
                continue
            # Everything queued now, in order per browser; a browser with a direct writer
            # gets its frames in one write (one send() for a burst, not one per message).
            items = list(outbox)
            outbox.clear()
            batches: dict[Browser, list[bytes]] = {}
            for outgoing, browsers in items:
                for browser in browsers:
                    if not browser.open:
                        continue
                    if browser.writer is not None and outgoing.close is None:
                        batch = batches.get(browser)
                        if batch is None:
                            batches[browser] = [outgoing.frame()]
                        else:
                            batch.append(outgoing.frame())
                        continue
                    earlier = batches.pop(browser, None)
                    if earlier:
                        self._write(browser, earlier)
                    try:
                        await browser.send(outgoing.asgi())
                    except Exception:
                        logger.exception("WebSocket bridge: sending to browser %d failed", browser.number)
                        browser.open = False
            for browser, frames in batches.items():
                self._write(browser, frames)

    def _write(self, browser: Browser, frames: list[bytes]) -> None:
        """Write ``frames`` to a browser with a direct writer in one call; cut it off if it is slow."""
        writer = browser.writer
        assert writer is not None
        if browser.open and not writer.write(frames[0] if len(frames) == 1 else b"".join(frames)):
            self._slow(browser, writer)

    def _slow(self, browser: Browser, writer: FrameWriter) -> None:
        """A browser that does not read: cut it off (it reconnects and catches up from history)."""
        logger.warning("WebSocket bridge: browser %s is a slow consumer; disconnecting", self.browser_id(browser))
        self.slow_consumers += 1
        browser.open = False
        writer.abort()

    def describe(self) -> dict[str, Any]:
        """What the status page shows about this process's bridge."""
        return {
            "link": self.link.kind,
            "connection_id": self.connection_id,
            "browsers": len(self.browsers),
            "queues": len(self._local),
            "delivered": self.delivered_count,
            "slow_consumers": self.slow_consumers,
            "denials": self.denials,
            "dead_letters": self.dead_letters,
            "refused_per_address": self.refused_per_address,
            "queued": len(self._outbox),
        }
