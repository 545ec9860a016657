"""The store from the CoreMQ protocol: the control requests ``coremq_get``, ``coremq_set``,
``coremq_delete``, ``coremq_incr`` and ``coremq_touch`` (docs/store.md, *From the CoreMQ protocol*).

:class:`StoreRequests` is composed in by the runner: :meth:`StoreRequests.attach`
registers its handlers with the broker's :class:`~coremq_broker.core.control.Control`
(the core never imports the store). Each request names a key; the permission
rules of the queue ``<prefix><key>`` (``coremq.store.<key>``) decide: ``subscribe``
for ``coremq_get`` (who may watch a key may read it), ``publish`` for the
changes. The store (:class:`~coremq_broker.store.Store`, or one whose methods
return awaitables, such as :class:`~coremq_broker.store.redis_store.RedisStore`)
is the memcached port's own, so both see the same keys.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import inspect
from typing import Any, Awaitable, Callable

from coremq_client import protocol as P

from ..core.control import RequestError
from .store import EXISTS, MAX_U64, NO_MEMORY, NON_NUMERIC, NOT_FOUND, NOT_STORED, TOO_LARGE, Item

__all__ = ["StoreRequests", "value_fields"]

MODES = ("set", "add", "replace", "append", "prepend")
#: Keys are memcached's: up to 250 bytes, no spaces or control characters (so both protocols reach them).
KEY_MAX_LENGTH = 250
#: A refused store request: the control pipeline answers ``ERROR: <text>`` with its code.
StoreRequestError = RequestError


def value_fields(value: bytes, limit: int | None = None) -> dict[str, Any]:
    """``size`` and ``value`` (text when UTF-8) or ``value_base64``; neither past ``limit`` bytes."""
    fields: dict[str, Any] = {"size": len(value)}
    if limit is None or len(value) <= limit:
        try:
            fields["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            fields["value_base64"] = base64.b64encode(value).decode("ascii")
    return fields


def _then(result: Any, answer: Callable[[Any], dict]) -> dict | Awaitable[dict]:
    """``answer(result)``, after awaiting ``result`` when it is awaitable."""
    if not inspect.isawaitable(result):
        return answer(result)

    async def later() -> dict:
        return answer(await result)

    return later()


class StoreRequests:
    """The store's control requests for one broker: :meth:`attach` registers them."""

    def __init__(self, store: Any, prefix: str = "coremq.store.") -> None:
        self.store = store
        self.prefix = prefix
        self.broker: Any = None

    def attach(self, broker: Any) -> Callable[[], None]:
        """Register the handlers with ``broker.control``; return the function that forgets the broker."""
        self.broker = broker
        for key, handler in ((P.STORE_GET, self.get), (P.STORE_SET, self.set), (P.STORE_DELETE, self.delete),
                             (P.STORE_INCR, self.incr), (P.STORE_TOUCH, self.touch)):
            broker.control.register(key, handler)
        return self.stop

    def stop(self) -> None:
        self.broker = None

    def _run(self, method: str, *args: Any) -> Any:
        """Call the store's ``method``; a blocking store's (Redis) in the loop's executor, as an awaitable."""
        function = getattr(self.store, method)
        if getattr(self.store, "blocking", False):
            return asyncio.get_running_loop().run_in_executor(None, functools.partial(function, *args))
        return function(*args)

    # -- reading a request ------------------------------------------------------

    def _key(self, connection: Any, request: str, fields: dict, action: str) -> tuple[str, bytes]:
        key = fields.get("key")
        encoded = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else b""
        if not encoded or len(encoded) > KEY_MAX_LENGTH or any(byte <= 32 or byte == 127 for byte in encoded):
            raise StoreRequestError(f"{request} takes a key of 1 to {KEY_MAX_LENGTH} bytes "
                                    "without spaces or control characters")
        self.broker.check(connection, action, self.prefix + key)
        return key, encoded

    @staticmethod
    def _fields(request: str, value: Any, allowed: frozenset[str]) -> dict:
        fields = {"key": value} if isinstance(value, str) else value
        if not isinstance(fields, dict):
            raise StoreRequestError(f"{request} takes a key or an object with a key")
        unknown = sorted(set(fields) - allowed - {"key"})
        if unknown:
            raise StoreRequestError(f"{request} takes no field {unknown[0]!r}")
        return fields

    @staticmethod
    def _number(request: str, fields: dict, name: str, low: int, high: int, default: int | None = 0) -> int:
        number = fields.get(name, default)
        if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
            raise StoreRequestError(f"{request} takes an integer {name} from {low} to {high}")
        return number

    # -- the requests -------------------------------------------------------------

    def get(self, connection: Any, value: Any, message: dict) -> dict | Awaitable[dict]:
        """``{"coremq_get": key}``: ``found``, and the value, ``flags``, ``cas`` and ``expires`` of a hit."""
        fields = self._fields(P.STORE_GET, value, frozenset())
        key, encoded = self._key(connection, P.STORE_GET, fields, "subscribe")

        def answer(item: Item | None) -> dict:
            if item is None:
                return {"response": P.OK_STORE_VALUE, "key": key, "found": False}
            return {"response": P.OK_STORE_VALUE, "key": key, "found": True, **value_fields(item.value),
                    "flags": item.flags, "cas": item.cas, "expires": item.expires or None}

        return _then(self._run("get", encoded), answer)

    def set(self, connection: Any, value: Any, message: dict) -> dict | Awaitable[dict]:
        """``{"coremq_set": {"key", "value" | "value_base64", "flags", "ttl", "mode", "cas"}}``: the new ``cas``."""
        request = P.STORE_SET
        fields = self._fields(request, value, frozenset({"value", "value_base64", "flags", "ttl", "mode", "cas"}))
        key, encoded = self._key(connection, request, fields, "publish")
        if isinstance(fields.get("value"), str) and "value_base64" not in fields:
            data = fields["value"].encode("utf-8", "surrogatepass")
        elif isinstance(fields.get("value_base64"), str) and "value" not in fields:
            try:
                data = base64.b64decode(fields["value_base64"], validate=True)
            except (binascii.Error, ValueError):
                raise StoreRequestError(f"{request} takes value_base64 in base64") from None
        else:
            raise StoreRequestError(f"{request} takes a value (text) or a value_base64")
        flags = self._number(request, fields, "flags", 0, 2**32 - 1)
        ttl = self._number(request, fields, "ttl", -(2**31), 2**31 - 1)
        mode = fields.get("mode", "set")
        if mode not in MODES:
            raise StoreRequestError(f"{request} takes a mode of {', '.join(MODES)}")
        cas = fields.get("cas")
        if cas is not None:
            cas = self._number(request, fields, "cas", 1, MAX_U64)
            if mode != "set":
                raise StoreRequestError(f"{request} takes a cas with the mode set only")
            mode = "cas"

        def answer(result: tuple[str, int]) -> dict:
            outcome, new_cas = result
            if outcome == NOT_STORED:
                if mode == "add":
                    raise StoreRequestError(f"key exists: {key!r}")
                if mode in ("append", "prepend") and new_cas:
                    raise StoreRequestError(f"value too large: {key!r} would pass the store's item limit")
                raise StoreRequestError(f"key not found: {key!r}")
            if outcome == NOT_FOUND:
                raise StoreRequestError(f"key not found: {key!r}")
            if outcome == EXISTS:
                raise StoreRequestError(f"cas mismatch: {key!r} changed since cas {cas}")
            if outcome in (TOO_LARGE, NO_MEMORY):
                raise StoreRequestError(f"value too large: {len(data)} bytes under {key!r} pass the store's item limit")
            return {"response": P.OK_STORE_STORED, "key": key, "cas": new_cas}

        return _then(self._store(mode, encoded, data, flags, ttl, cas or 0), answer)

    def _store(self, mode: str, key: bytes, data: bytes, flags: int, ttl: int, cas: int) -> Any:
        """``(outcome, new cas)``; for a local store, done here (a store with ``store_cas`` answers both)."""
        store = self.store
        if hasattr(store, "store_cas"):
            return self._run("store_cas", mode, key, data, flags, ttl, cas)
        outcome = store.store(mode, key, data, flags, ttl, cas)
        item = store.items.get(key)
        if outcome == NOT_STORED and mode in ("append", "prepend"):
            return outcome, 1 if item is not None else 0  # 1: the key is there, the result too large
        return outcome, item.cas if outcome == "STORED" and item is not None else 0

    def delete(self, connection: Any, value: Any, message: dict) -> dict | Awaitable[dict]:
        """``{"coremq_delete": key}``: ``deleted``, whether the key was there."""
        fields = self._fields(P.STORE_DELETE, value, frozenset())
        key, encoded = self._key(connection, P.STORE_DELETE, fields, "publish")
        return _then(self._run("delete", encoded),
                     lambda deleted: {"response": P.OK_STORE_DELETED, "key": key, "deleted": bool(deleted)})

    def incr(self, connection: Any, value: Any, message: dict) -> dict | Awaitable[dict]:
        """``{"coremq_incr": {"key", "delta"}}``: the new ``value`` (64-bit: up wraps, down stops at 0)."""
        request = P.STORE_INCR
        fields = self._fields(request, value, frozenset({"delta"}))
        key, encoded = self._key(connection, request, fields, "publish")
        delta = self._number(request, fields, "delta", -MAX_U64, MAX_U64, default=1)

        def answer(result: Any) -> dict:
            if result == NOT_FOUND:
                raise StoreRequestError(f"key not found: {key!r}")
            if result == NON_NUMERIC:
                raise StoreRequestError(f"value not numeric: {key!r} holds no unsigned 64-bit number")
            return {"response": P.OK_STORE_INCREMENTED, "key": key, "value": result}

        return _then(self._run("delta", encoded, abs(delta), delta >= 0), answer)

    def touch(self, connection: Any, value: Any, message: dict) -> dict | Awaitable[dict]:
        """``{"coremq_touch": {"key", "ttl"}}``: ``touched``, whether the key was there."""
        request = P.STORE_TOUCH
        fields = self._fields(request, value, frozenset({"ttl"}))
        key, encoded = self._key(connection, request, fields, "publish")
        ttl = self._number(request, fields, "ttl", -(2**31), 2**31 - 1, default=None)
        return _then(self._run("touch", encoded, ttl),
                     lambda touched: {"response": P.OK_STORE_TOUCHED, "key": key, "touched": bool(touched)})
