"""The broker's key/value store from a client, sans-I/O: each method's work as an operation.

Both :class:`~coremq_client.MessageQueue` and :class:`~coremq_client.AsyncMessageQueue`
carry these operations out (``store_get``, ``store_set``, ``store_delete``,
``store_incr``, ``store_touch``); the requests are built by
:class:`~coremq_client.protocol.ClientProtocol`. The store is served by
``run_coremq`` (docs/store.md); a refusal raises :class:`~coremq_client.errors.ServerError`
with its ``code`` (``store_not_found``, ``store_exists``, ``store_cas_mismatch``, ...).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from .session import Operation, Request

__all__ = ["StoreItem", "get", "set", "delete", "incr", "touch"]


@dataclass(frozen=True, slots=True)
class StoreItem:
    """A key's value as the store holds it: ``cas`` changes with every write; ``expires`` is a UNIX time or None."""

    key: str
    value: bytes
    flags: int
    cas: int
    expires: float | None

    @property
    def text(self) -> str:
        """The value as UTF-8 text."""
        return self.value.decode("utf-8")


def get(key: str) -> Operation[StoreItem | None]:
    reply: Any = yield Request(lambda p: p.store_get(key))
    if not reply.get("found"):
        return None
    value = reply["value"].encode("utf-8", "surrogatepass") if "value" in reply else base64.b64decode(
        reply["value_base64"])
    return StoreItem(reply["key"], value, reply["flags"], reply["cas"], reply.get("expires"))


def set(key: str, value: str | bytes, *, flags: int = 0, ttl: int = 0, mode: str = "set",
        cas: int | None = None) -> Operation[int]:
    reply: Any = yield Request(lambda p: p.store_set(key, value, flags=flags, ttl=ttl, mode=mode, cas=cas),
                               retry=False)
    return reply["cas"]


def delete(key: str) -> Operation[bool]:
    reply: Any = yield Request(lambda p: p.store_delete(key), retry=False)
    return bool(reply["deleted"])


def incr(key: str, delta: int = 1) -> Operation[int]:
    reply: Any = yield Request(lambda p: p.store_incr(key, delta), retry=False)
    return reply["value"]


def touch(key: str, ttl: int) -> Operation[bool]:
    reply: Any = yield Request(lambda p: p.store_touch(key, ttl), retry=False)
    return bool(reply["touched"])
