"""``publish()`` and ``apublish()``: send a message to the broker from Django code.

Each process keeps one blocking client (shared by its threads) and one asyncio
client per event loop, created on first use from ``settings.COREMQ``
(``HOST``/``PORT``/``ENCODER``/``DECODER``) and reconnecting by themselves.
Changing ``COREMQ`` (``override_settings``) drops them; a forked child builds
its own instead of sharing its parent's socket.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
import threading
import weakref
from functools import partial
from typing import Any

from django.core.signals import setting_changed
from django.db import transaction
from django.dispatch import receiver

from coremq_client.async_client import AsyncMessageQueue
from coremq_client.errors import LocalUsageError
from coremq_client.sync_client import MessageQueue

from . import conf

__all__ = ["publish", "apublish", "close_clients", "client_options"]

# An address that means "every interface" to a server means "this host" to a client.
_WILDCARD_HOSTS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}

_lock = threading.Lock()
_client: MessageQueue | None = None
_client_pid: int | None = None
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[AsyncMessageQueue]] = (
    weakref.WeakKeyDictionary()
)
_closing: set[asyncio.Task[None]] = set()  # close() tasks, kept alive until they finish


def publish(queue: str, message: Any, *, on_commit: bool = False, using: str | None = None) -> dict | None:
    """Publish ``message`` to ``queue`` and return the broker's reply.

    With ``on_commit=True`` the message is sent only once the current
    transaction on ``using`` commits (never if it rolls back) and ``None`` is
    returned; outside a transaction it is sent at once. Blocking: from async
    code use :func:`apublish`. Raises the client's errors
    (``ConnectionClosed``, ``Timeout``, ``ServerError``) when the broker cannot
    be reached or refuses the message.
    """
    if _in_event_loop():
        raise LocalUsageError("publish() blocks; from async code use 'await apublish(...)'")
    if on_commit:
        transaction.on_commit(partial(_publish_now, queue, message), using=using)
        return None
    return _publish_now(queue, message)


async def apublish(queue: str, message: Any) -> dict | None:
    """Publish ``message`` to ``queue`` from async code and return the broker's reply.

    There is no ``on_commit`` here: Django transactions live in sync code, so
    call ``publish(..., on_commit=True)`` inside the ``atomic`` block instead.
    """
    client = await _async_client()
    return await client.publish(queue, message)


def close_clients() -> None:
    """Close this process's blocking client and forget every client; the next publish reconnects."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None and _client_pid == os.getpid():
        client.close()
    loops = list(_async_clients.items())
    _async_clients.clear()
    for loop, connecting in loops:
        if not loop.is_closed():
            loop.call_soon_threadsafe(partial(_close_async, connecting))


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == conf.SETTING:
        close_clients()


def _publish_now(queue: str, message: Any) -> dict | None:
    return _sync_client().publish(queue, message)


def _sync_client() -> MessageQueue:
    """This process's blocking client, connected on first use (MessageQueue is thread-safe)."""
    global _client, _client_pid
    with _lock:
        if _client is None or _client_pid != os.getpid() or _client.closed:
            client = MessageQueue(**_client_options())
            client.connect()
            _client, _client_pid = client, os.getpid()
        return _client


async def _async_client() -> AsyncMessageQueue:
    """The running loop's client; concurrent first calls share one connection attempt."""
    loop = asyncio.get_running_loop()
    connecting = _async_clients.get(loop)
    if connecting is not None and connecting.done():
        if connecting.cancelled() or connecting.exception() is not None or connecting.result().closed:
            connecting = None  # failed or ended: make a new one
    if connecting is None:
        connecting = _async_clients[loop] = loop.create_task(_connect_async())
    return await asyncio.shield(connecting)


async def _connect_async() -> AsyncMessageQueue:
    client = AsyncMessageQueue(**_client_options())
    await client.connect()
    return client


def _close_async(connecting: asyncio.Task[AsyncMessageQueue]) -> None:
    if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
        closing = asyncio.ensure_future(connecting.result().close())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
    else:
        connecting.cancel()


def _client_options() -> dict[str, Any]:
    return {**client_options(), "reconnect": True}


def client_options(host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """How this process's own clients reach the broker: keyword arguments of ``(Async)MessageQueue``.

    The address is ``settings.COREMQ``'s (or the one given), the codec its
    ``ENCODER``/``DECODER``, the credentials ``CLIENT_TOKEN`` or
    ``CLIENT_USERNAME``/``CLIENT_PASSWORD``. When ``TLS_CERT`` is set the
    broker speaks only TLS, so the clients do too, trusting that certificate
    besides the system's authorities (it must name the host they connect to).
    """
    config = conf.get_config()
    host = config.host if host is None else host
    options: dict[str, Any] = {
        "host": _WILDCARD_HOSTS.get(host, host),
        "port": config.port if port is None else port,
        "encoder": config.codec.encoder,
        "decoder": config.codec.decoder,
        **conf.get_client_credentials(),
    }
    if config.tls_cert:
        options["ssl"] = _tls_client_context(config.tls_cert)
    return options


@functools.lru_cache(maxsize=4)
def _tls_client_context(certificate: str) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(certificate)
    return context


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
