"""Where the status page gets its data: the broker in this process, or one reached over the protocol.

Both sources answer the same three coroutines, so the views never care which
one they hold:

- :class:`LocalSource`: ``run_coremq`` serves the web app on the broker's own
  loop (``Broker.running()``). The registry is read on that loop: directly
  when the caller already runs there, else by hopping onto it with
  ``run_coroutine_threadsafe``. It is never touched from another thread.
- :class:`RemoteSource`: the web app runs in a daphne process of its own. It
  asks the broker with the protocol's status and admin requests
  (``coremq_status``, ``coremq_admin``) through one client per event loop.
  The broker's access policy may refuse them; that shows on the page.

:func:`get_source` picks one per request.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from typing import Any, Callable, Protocol, TypeVar

from coremq_client.async_client import AsyncMessageQueue
from coremq_client.errors import CoreMQError

from ..core.broker import Broker
from ..core.control import RequestError

__all__ = [
    "StatusSource", "LocalSource", "RemoteSource", "SourceUnavailable", "ActionFailed", "get_source", "close_client",
]

T = TypeVar("T")

#: Seconds to wait for the broker's answer before the page says it is unavailable.
TIMEOUT = 3.0


class SourceUnavailable(CoreMQError):
    """The broker could not be asked (not running, unreachable, or it refused the status request)."""


class ActionFailed(CoreMQError):
    """The broker refused or could not carry out an admin action; the text says why."""


class StatusSource(Protocol):
    kind: str

    async def snapshot(self) -> dict[str, Any]:
        """``{"source", "time", "broker", "connections", "queues", "observer"}``: see :func:`shape`."""

    async def admin(self, action: str, *, by: str, **fields: Any) -> dict[str, Any]:
        """Carry out ``disconnect`` (``connection=id``) or ``purge`` (``queue=name``); return the reply."""

    async def publish(self, queue: str, message: Any, *, by: str) -> dict[str, Any]:
        """Publish a test message to ``queue``; return the reply (with the message's ``id``)."""


def shape(status: dict[str, Any], source: str, observer: str | None = None) -> dict[str, Any]:
    """The status page's snapshot from a detailed status (``Broker.status(connections=..., queues=..., series=...)``).

    ``observer`` is the id of the connection the snapshot was asked over
    (remote only), so the page can mark it.
    """
    broker = {key: value for key, value in status.items()
              if key not in ("response", "request", "connection_list", "queue_list")}
    return {
        "source": source,
        "time": time.time(),
        "observer": observer,
        "broker": broker,
        "connections": status.get("connection_list", []),
        "queues": status.get("queue_list", []),
    }


class LocalSource:
    """The live registry of the broker running in this process."""

    kind = "local"

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    async def snapshot(self) -> dict[str, Any]:
        status = await self._on_loop(lambda: self.broker.status(connections=True, queues=True, series=True))
        return shape(status, self.kind)

    async def admin(self, action: str, *, by: str, **fields: Any) -> dict[str, Any]:
        try:
            return await self._on_loop(lambda: self.broker.admin({"action": action, **fields}, by=by))
        except RequestError as exc:
            raise ActionFailed(str(exc)) from None

    async def publish(self, queue: str, message: Any, *, by: str) -> dict[str, Any]:
        # Through the protocol, like any client, so that every check and the
        # durable path apply; a one-off connection, as actions are rare.
        options = _client_options(host=self.broker.host, port=self.broker.port)
        try:
            async with AsyncMessageQueue(**options) as client:
                return await client.publish(queue, message) or {}
        except (CoreMQError, OSError) as exc:
            raise ActionFailed(str(exc)) from None

    async def _on_loop(self, function: Callable[[], T]) -> T:
        """``function()`` run on the broker's loop, from whichever loop or thread we are on."""
        loop = self.broker.loop
        if loop is None or loop.is_closed() or self.broker is not Broker.running():
            raise SourceUnavailable("the broker in this process has stopped")
        if asyncio.get_running_loop() is loop:
            return function()

        async def call() -> T:
            return function()

        future = asyncio.run_coroutine_threadsafe(call(), loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT)
        except TimeoutError:
            raise SourceUnavailable(f"the broker's loop did not answer within {TIMEOUT} s") from None


class RemoteSource:
    """A broker in another process, asked over the protocol.

    The client logs in with ``COREMQ['CLIENT_TOKEN']`` (or
    ``CLIENT_USERNAME``/``CLIENT_PASSWORD``; see :func:`_client_options`): a
    broker whose policy is not open answers ``status``/``admin`` requests to
    staff accounts only, so those should be a staff user's. Anonymous, it is
    answered only under the open policy.
    """

    kind = "remote"

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    async def snapshot(self) -> dict[str, Any]:
        client = await self._client()
        try:
            status = await client.status(connections=True, queues=True, series=True)
        except (CoreMQError, OSError) as exc:
            raise SourceUnavailable(f"broker at {self.address}: {exc}") from None
        return shape(status, self.kind, observer=client.connection_id)

    async def admin(self, action: str, *, by: str, **fields: Any) -> dict[str, Any]:
        client = await self._client()
        try:
            return await client.admin(action, **fields)
        except (CoreMQError, OSError) as exc:
            raise ActionFailed(str(exc)) from None

    async def publish(self, queue: str, message: Any, *, by: str) -> dict[str, Any]:
        client = await self._client()
        try:
            reply = await client.publish(queue, message)
        except (CoreMQError, OSError) as exc:
            raise ActionFailed(str(exc)) from None
        return reply or {}

    @property
    def address(self) -> str:
        return f"{self.options['host']}:{self.options['port']}"

    async def _client(self) -> AsyncMessageQueue:
        try:
            return await _client_for_loop(self.options)
        except (CoreMQError, OSError) as exc:
            raise SourceUnavailable(f"broker at {self.address}: {exc}") from None


# One status client per event loop (daphne has one), shared by the page's requests.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[dict, asyncio.Task[AsyncMessageQueue]]] = (
    weakref.WeakKeyDictionary()
)


async def _client_for_loop(options: dict[str, Any]) -> AsyncMessageQueue:
    loop = asyncio.get_running_loop()
    entry = _clients.get(loop)
    if entry is not None:
        known, connecting = entry
        if known != options:
            connecting = None  # settings changed (tests): a client for the new address
        elif connecting.done() and (connecting.cancelled() or connecting.exception() is not None
                                    or connecting.result().closed):
            connecting = None
    else:
        connecting = None
    if connecting is None:
        if entry is not None:
            _close_later(entry[1])
        connecting = loop.create_task(_connect(options))
        _clients[loop] = (options, connecting)
    return await asyncio.shield(connecting)


async def _connect(options: dict[str, Any]) -> AsyncMessageQueue:
    client = AsyncMessageQueue(**options)
    await client.connect()
    return client


def _close_later(connecting: asyncio.Task[AsyncMessageQueue]) -> None:
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        task = asyncio.ensure_future(connecting.result().close())
        _closing.add(task)
        task.add_done_callback(_closing.discard)
    elif not connecting.done():
        connecting.cancel()


_closing: set[asyncio.Future[None]] = set()


async def close_client() -> None:
    """Close the running loop's status client, if it has one (tests; a web process simply exits)."""
    entry = _clients.pop(asyncio.get_running_loop(), None)
    if entry is None:
        return
    connecting = entry[1]
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        await connecting.result().close()
    else:
        connecting.cancel()


def _client_options(host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """How the web process reaches the broker (``publishing.client_options``: address, codec, TLS, credentials).

    The credentials (``COREMQ['CLIENT_TOKEN']``...) should be a staff
    account's when the policy is not open: status and admin requests are for staff.
    """
    from ..publishing import client_options

    return {**client_options(host, port), "reconnect": True, "timeout": TIMEOUT, "connect_timeout": TIMEOUT}


def get_source() -> StatusSource:
    """The broker of this process if ``run_coremq`` serves us, else the one ``settings.COREMQ`` names."""
    broker = Broker.running()
    if broker is not None:
        return LocalSource(broker)
    return RemoteSource(_client_options())
