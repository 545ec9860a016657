"""The store's keys in Redis, so that every node of a cluster answers the same (docs/store.md, *Several nodes*).

:class:`RedisStore` has the interface of :class:`~coremq_broker.store.Store`
that the memcached session and the control requests use, over a blocking
redis-py client: the memcached listener runs each connection's commands in a
worker thread (:class:`~coremq_broker.transports.memcached.MemcachedServer`),
the control requests in the loop's executor. With the prefix ``P`` (the
cluster's ``KEY_PREFIX``, ``coremq:`` by default)::

    P s:<key>:i     hash    v: value, f: flags, c: cas, h: fetched since stored    a Redis expiry for the item's
    P s:cas         string  the last cas given (INCR)

Each change is one Lua script (or a WATCH transaction for ``incr``, whose
64-bit arithmetic Lua's numbers cannot do), so a ``cas`` on one node and a
write on another never both win. Expiry is Redis's (``PEXPIREAT``), memory
Redis's too (its ``maxmemory`` and policy: ``MEMCACHED_MEMORY`` does not
apply). Statistics (hits, misses, ...) are this node's own.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import redis
from redis.exceptions import RedisError, WatchError

from ..cluster.keys import Keys
from ..core.control import RequestError
from .store import (
    EXISTS, ITEM_OVERHEAD, MAX_U64, NON_NUMERIC, NOT_FOUND, NOT_STORED, STORED, TOO_LARGE, Item, Mode, Store,
    StoreResult, Watch, parse_u64,
)

__all__ = ["RedisStore"]

# KEYS: item, cas counter. ARGV: mode, value, flags, expires (ms; 0 never, -1 already past), cas, max value bytes.
# Returns {outcome, cas}; an append or prepend over the limit {"NOT_STORED", -1}.
STORE_SCRIPT = """
local mode = ARGV[1]
local old = redis.call('HMGET', KEYS[1], 'c', 'f', 'v')
local exists = old[1] ~= false
if mode == 'add' and exists then return {'NOT_STORED', 0} end
if mode == 'cas' then
  if not exists then return {'NOT_FOUND', 0} end
  if old[1] ~= ARGV[5] then return {'EXISTS', 0} end
elseif mode ~= 'set' and mode ~= 'add' and not exists then
  return {'NOT_STORED', 0}
end
local value, flags, expires = ARGV[2], ARGV[3], tonumber(ARGV[4])
local keep = false
if mode == 'append' or mode == 'prepend' then
  if mode == 'append' then value = old[3] .. value else value = value .. old[3] end
  if #value > tonumber(ARGV[6]) then return {'NOT_STORED', -1} end
  flags, keep = old[2], true
end
local cas = redis.call('INCR', KEYS[2])
if expires == -1 then
  redis.call('DEL', KEYS[1])
  return {'STORED', cas}
end
redis.call('HDEL', KEYS[1], 'h')
redis.call('HSET', KEYS[1], 'v', value, 'f', flags, 'c', cas)
if not keep then
  if expires > 0 then redis.call('PEXPIREAT', KEYS[1], expires) else redis.call('PERSIST', KEYS[1]) end
end
return {'STORED', cas}
"""

# KEYS: item. ARGV: touch ("" none; else expires in ms, 0 never, -1 already past), "1" to count as a fetch.
# Returns {v, f, c, expires ms (-1 never, 1000 past), fetched before ("1" or "0")} or nil.
GET_SCRIPT = """
local item = redis.call('HMGET', KEYS[1], 'v', 'f', 'c', 'h')
if item[1] == false then return false end
local fetched = item[4] or '0'
if ARGV[2] == '1' and fetched ~= '1' then redis.call('HSET', KEYS[1], 'h', '1') end
if ARGV[1] ~= '' then
  local expires = tonumber(ARGV[1])
  if expires == -1 then
    redis.call('DEL', KEYS[1])
    return {item[1], item[2], item[3], 1000, fetched}
  end
  if expires > 0 then redis.call('PEXPIREAT', KEYS[1], expires) else redis.call('PERSIST', KEYS[1]) end
end
return {item[1], item[2], item[3], redis.call('PEXPIRETIME', KEYS[1]), fetched}
"""


class _Items:
    """``store.items`` as the memcached session reads it: ``get``, ``[key]``, ``len``."""

    def __init__(self, store: "RedisStore") -> None:
        self.store = store

    def get(self, key: bytes) -> Item | None:
        return self.store.peek(key)

    def __getitem__(self, key: bytes) -> Item:
        item = self.store.peek(key)
        if item is None:
            raise KeyError(key)
        return item

    def __len__(self) -> int:
        return sum(1 for _ in self.store.keys())

    def __bool__(self) -> bool:
        return next(self.store.keys(), None) is not None


class RedisStore:
    """The store's items in Redis at ``url``, under ``prefix``; blocking calls (see the module)."""

    #: The memcached listener and the control requests call it off the event loop.
    blocking = True

    def __init__(self, url: str, prefix: str = "coremq:", *, max_item_size: int = 2**20, watch: Watch | None = None,
                 timeout: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._p = prefix.encode() + b"s:"
        self.cas_key = self._p + b"cas"
        self.max_item_size = max_item_size
        self.memory = 0  # Redis's maxmemory decides
        self.bytes = 0  # not counted: Redis holds the items
        self.watch = watch
        self.clock = clock
        self.started = clock()
        self.items = _Items(self)
        self._store_script = self.client.register_script(STORE_SCRIPT)
        self._get_script = self.client.register_script(GET_SCRIPT)
        self.stats = Store(0).stats  # the same counters as the local store, for this node
        self._keys = Keys(prefix)
        self._listened: dict[str, tuple[float, bool]] = {}

    def listened(self, queue: str) -> bool:
        """Whether subscribers on any node listen to ``queue`` (its cluster channel has subscribers).

        Remembered for a second per queue: the watch asks it for each change of a key whose
        queue this node does not hold.
        """
        now = time.monotonic()
        known = self._listened.get(queue)
        if known is not None and known[0] > now:
            return known[1]
        try:
            listened = bool(self.client.pubsub_numsub(self._keys.queue_channel(queue))[0][1])
        except RedisError:
            listened = False
        if len(self._listened) >= 10_000:
            self._listened.clear()
        self._listened[queue] = (now + 1.0, listened)
        return listened

    def key(self, key: bytes) -> bytes:
        return self._p + key + b":i"

    def keys(self) -> Iterator[bytes]:
        """The store's keys (a SCAN: for statistics, not for the hot path)."""
        for name in self.client.scan_iter(match=self._p.replace(b"*", b"\\*") + b"*:i", count=1000):
            yield name[len(self._p):-2]

    def close(self) -> None:
        self.client.close()

    # -- time --------------------------------------------------------------------

    expiry = Store.expiry  # memcached's exptime to a UNIX time (0 never, 1.0 already past)

    def _expires_ms(self, exptime: int) -> int:
        expires = self.expiry(exptime)
        if expires == 0.0:
            return 0
        if expires <= self.clock():
            return -1
        return int(expires * 1000)

    # -- reading -----------------------------------------------------------------

    def _call(self, function: Callable[..., Any], *args: Any, **options: Any) -> Any:
        try:
            return function(*args, **options)
        except RedisError as exc:
            raise RequestError(f"store unavailable: {exc}") from exc

    def _item(self, found: Any) -> Item | None:
        if not found:
            return None
        value, flags, cas, expires, fetched = found
        item = Item(value, int(flags), expires / 1000 if expires > 0 else 0.0, int(cas), self.clock())
        item.fetched = fetched == b"1"
        return item

    def peek(self, key: bytes, now: float | None = None) -> Item | None:
        return self._item(self._call(self._get_script, keys=[self.key(key)], args=["", "0"]))

    def get(self, key: bytes, touch: int | None = None) -> Item | None:
        stats = self.stats
        stats["cmd_get"] += 1
        argument = "" if touch is None else self._expires_ms(touch)
        item = self._item(self._call(self._get_script, keys=[self.key(key)], args=[argument, "1"]))
        if touch is not None:
            stats["cmd_touch"] += 1
            stats["touch_hits" if item is not None else "touch_misses"] += 1
        if item is None:
            stats["get_misses"] += 1
            return None
        stats["get_hits"] += 1
        if touch is not None and self.watch is not None:
            self.watch("touch", key, item)
        return item

    # -- writing -----------------------------------------------------------------

    def fits(self, key: bytes, size: int) -> bool:
        return len(key) + size + ITEM_OVERHEAD <= self.max_item_size

    def store(self, mode: Mode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
              cas: int = 0) -> StoreResult:
        return self.store_cas(mode, key, value, flags, exptime, cas)[0]  # type: ignore[return-value]

    def store_cas(self, mode: str, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
                  cas: int = 0) -> tuple[str, int]:
        """:meth:`store` and the item's new cas (an append or prepend over the limit: ``(NOT_STORED, 1)``)."""
        self.stats["cmd_set"] += 1
        if not self.fits(key, len(value)):
            self.refuse_too_large(mode, key)  # type: ignore[arg-type]
            return TOO_LARGE, 0
        expires = self._expires_ms(exptime)
        outcome, new_cas = self._call(self._store_script, keys=[self.key(key), self.cas_key], args=[
            mode, value, flags, expires, cas, self.max_item_size - len(key) - ITEM_OVERHEAD])
        outcome = outcome.decode()
        if mode == "cas":
            self.stats[{STORED: "cas_hits", EXISTS: "cas_badval", NOT_FOUND: "cas_misses"}[outcome]] += 1
        if outcome == NOT_STORED and new_cas == -1:
            return NOT_STORED, 1
        if outcome == STORED and self.watch is not None:
            if expires == -1:
                self.watch("delete", key, None)
            else:
                item = self.peek(key)
                if item is not None:
                    self.watch("set", key, item)
        return outcome, new_cas if outcome == STORED else 0

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> StoreResult:
        return self.store("set", key, value, flags, exptime)

    def refuse_too_large(self, mode: Mode, key: bytes) -> None:
        self.stats["store_too_large"] += 1
        if mode == "set":
            self._call(self.client.delete, self.key(key))

    def delta(self, key: bytes, amount: int, incr: bool = True) -> int | str:
        """``incr``/``decr`` as :meth:`Store.delta`, in a WATCH transaction (retried when another node wrote)."""
        name = "incr" if incr else "decr"
        redis_key = self.key(key)
        while True:
            try:
                with self.client.pipeline() as pipe:
                    pipe.watch(redis_key)
                    value = pipe.hget(redis_key, "v")
                    if value is None:
                        self.stats[f"{name}_misses"] += 1
                        return NOT_FOUND
                    number = parse_u64(value)
                    if number is None:
                        return NON_NUMERIC
                    number = (number + amount) & MAX_U64 if incr else max(number - amount, 0)
                    digits = (b"%d" % number).ljust(len(value))
                    cas = pipe.incr(self.cas_key)  # not watched: a retry only skips a cas id
                    pipe.multi()
                    pipe.hset(redis_key, mapping={"v": digits, "c": cas})
                    pipe.hdel(redis_key, "h")
                    pipe.execute()
                    break
            except WatchError:
                continue
            except RedisError as exc:
                raise RequestError(f"store unavailable: {exc}") from exc
        self.stats[f"{name}_hits"] += 1
        if self.watch is not None:
            item = self.peek(key)
            if item is not None:
                self.watch(name, key, item)
        return number

    def touch(self, key: bytes, exptime: int) -> bool:
        """Give the item a new expiry (not a fetch); False if there is none."""
        item = self._item(self._call(self._get_script, keys=[self.key(key)], args=[self._expires_ms(exptime), "0"]))
        self.stats["cmd_touch"] += 1
        self.stats["touch_hits" if item is not None else "touch_misses"] += 1
        if item is not None and self.watch is not None:
            self.watch("touch", key, item)
        return item is not None

    def delete(self, key: bytes, count: bool = True) -> bool:
        deleted = bool(self._call(self.client.delete, self.key(key)))
        if count:
            self.stats["delete_hits" if deleted else "delete_misses"] += 1
        if deleted and self.watch is not None:
            self.watch("delete", key, None)
        return deleted

    def flush(self, delay: int = 0) -> None:
        """``flush_all``: every key goes (with ``delay``: each expires then, at the latest)."""
        self.stats["cmd_flush"] += 1
        at = self._expires_ms(delay) if delay > 0 else -1
        for name in list(self.keys()):
            redis_key = self.key(name)
            if at == -1:
                self._call(self.client.delete, redis_key)
                if self.watch is not None:
                    self.watch("flush", name, None)
            else:
                self._call(self.client.pexpireat, redis_key, at, lt=True)
                self._call(self.client.pexpireat, redis_key, at, nx=True)

    def sweep(self, now: float | None = None) -> int:
        """Nothing to do: Redis expires the items."""
        return 0

    def figures(self) -> dict[str, int]:
        return {"items": len(self.items), "bytes": self.bytes, "limit_bytes": self.memory,
                "hits": self.stats["get_hits"], "misses": self.stats["get_misses"],
                "evictions": self.stats["evictions"]}
