"""The key/value store: items with flags, a CAS id and an expiry, evicted least recently used first.

Django-free and I/O-free: the memcached transport (and later other front ends)
call it on the event loop's thread. Semantics follow memcached 1.6:

- An expiry (``exptime``) of 0 never expires; up to 30 days it is relative
  seconds; above that an absolute UNIX time (one already past expires at once);
  a negative one has expired already (the item is stored, and no one sees it).
- Every change takes a new CAS id from one counter (the first is 1).
- ``memory`` caps :attr:`Store.bytes`: each item counts its key, its value and
  :data:`ITEM_OVERHEAD`; past the cap the least recently used items go first.
  An item whose key, value and overhead exceed ``max_item_size`` is refused.
- Expired items are dropped when they are next looked up, and by
  :meth:`Store.sweep` (the server calls it every second) so that watchers
  learn of an expiry when it happens.

``watch``, when given, is called as ``watch(event, key, item)`` after every
change: ``event`` is one of :data:`EVENTS`; ``item`` is the new item, or None
when the key is gone (delete, expire, evict, flush).
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from typing import Callable, Literal

__all__ = [
    "Store", "Item", "Watch", "EVENTS", "ITEM_OVERHEAD", "RELATIVE_LIMIT", "StoreResult",
    "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "TOO_LARGE", "NO_MEMORY", "NON_NUMERIC", "MAX_U64",
]

#: Bytes memcached adds to each item (header, CAS id, the value's CRLF): a
#: 1 MiB item holds at most 1048576 - 59 - len(key) bytes of value, as there.
ITEM_OVERHEAD = 59
#: Expiry times above this many seconds (30 days) are absolute UNIX times.
RELATIVE_LIMIT = 60 * 60 * 24 * 30
MAX_U64 = 2**64 - 1

STORED, NOT_STORED, EXISTS, NOT_FOUND = "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND"
TOO_LARGE, NO_MEMORY, NON_NUMERIC = "TOO_LARGE", "NO_MEMORY", "NON_NUMERIC"
StoreResult = Literal["STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "TOO_LARGE", "NO_MEMORY"]
Mode = Literal["set", "add", "replace", "append", "prepend", "cas"]

EVENTS = ("set", "incr", "decr", "touch", "delete", "expire", "evict", "flush")


class Item:
    """One stored value. ``expires`` is a UNIX time (0: never); ``accessed`` the last read or write."""

    __slots__ = ("value", "flags", "expires", "cas", "stored", "accessed", "fetched")

    def __init__(self, value: bytes, flags: int, expires: float, cas: int, now: float) -> None:
        self.value = value
        self.flags = flags
        self.expires = expires
        self.cas = cas
        self.stored = now
        self.accessed = now
        self.fetched = False

    def ttl(self, now: float) -> int:
        """Seconds left, as memcached's ``mg ... t`` says them (-1: never expires)."""
        if not self.expires:
            return -1
        left = self.expires - now
        return max(int(left) + (left % 1 > 0), 0)


Watch = Callable[[str, bytes, "Item | None"], None]


class Store:
    """Keys (bytes up to 250) to :class:`Item`, in least-recently-used order."""

    def __init__(self, memory: int = 64 * 2**20, *, max_item_size: int = 2**20, watch: Watch | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.memory = memory
        self.max_item_size = max_item_size
        self.watch = watch
        self.clock = clock
        self.started = clock()
        self.items: OrderedDict[bytes, Item] = OrderedDict()
        self.bytes = 0
        self.last_cas = 0
        self._expiries: list[tuple[float, bytes]] = []  # (expires, key): a heap, swept every second
        self._flush_at = 0.0  # a delayed flush_all: items stored before it are gone from then on
        self.stats = dict.fromkeys((
            "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses", "get_expired", "get_flushed",
            "delete_misses", "delete_hits", "incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses",
            "cas_hits", "cas_badval", "touch_hits", "touch_misses", "store_too_large", "store_no_memory",
            "evictions", "expired_unfetched", "evicted_unfetched", "reclaimed", "total_items",
        ), 0)

    # -- time ---------------------------------------------------------------

    def expiry(self, exptime: int, now: float | None = None) -> float:
        """The UNIX time an ``exptime`` from the protocol stands for (0: never; 1.0: already past)."""
        if exptime == 0:
            return 0.0
        if exptime < 0:
            return 1.0
        if exptime > RELATIVE_LIMIT:
            return float(exptime) if exptime > self.started else 1.0
        return (self.clock() if now is None else now) + exptime

    # -- reading --------------------------------------------------------------

    def peek(self, key: bytes, now: float | None = None) -> Item | None:
        """The live item under ``key`` (expired or flushed ones are dropped), without counting or reordering."""
        item = self.items.get(key)
        if item is None:
            return None
        now = self.clock() if now is None else now
        if item.expires and item.expires <= now:
            self.stats["get_expired"] += 1
            self._drop(key, item, "expire")
            return None
        if self._flush_at and self._flush_at <= now and item.stored <= self._flush_at:
            self.stats["get_flushed"] += 1
            self._drop(key, item, "flush")
            return None
        return item

    def get(self, key: bytes, touch: int | None = None) -> Item | None:
        """A retrieval (``get``/``gat``): counted as a hit or a miss, and made the most recently used.

        ``touch``: a new exptime for the item (``gat``).
        """
        now = self.clock()
        item = self.peek(key, now)
        stats = self.stats
        stats["cmd_get"] += 1
        if touch is not None:
            stats["cmd_touch"] += 1
        if item is None:
            stats["get_misses"] += 1
            if touch is not None:
                stats["touch_misses"] += 1
            return None
        stats["get_hits"] += 1
        item.fetched = True
        item.accessed = now
        self.items.move_to_end(key)
        if touch is not None:
            stats["touch_hits"] += 1
            self._set_expiry(key, item, self.expiry(touch, now))
            if self.watch is not None:
                self.watch("touch", key, item)
        return item

    # -- writing --------------------------------------------------------------

    def fits(self, key: bytes, size: int) -> bool:
        """Whether a value of ``size`` bytes under ``key`` is within ``max_item_size``."""
        return len(key) + size + ITEM_OVERHEAD <= self.max_item_size

    def store(self, mode: Mode, key: bytes, value: bytes, flags: int = 0, exptime: int = 0,
              cas: int = 0) -> StoreResult:
        """``set``, ``add``, ``replace``, ``append``, ``prepend`` or ``cas`` (with ``cas``, the id read)."""
        self.stats["cmd_set"] += 1
        if not self.fits(key, len(value)):
            self.refuse_too_large(mode, key)
            return TOO_LARGE
        now = self.clock()
        old = self.peek(key, now)
        if mode == "set":
            pass
        elif mode == "add":
            if old is not None:
                old.accessed = now
                self.items.move_to_end(key)
                return NOT_STORED
        elif mode == "cas":
            if old is None:
                self.stats["cas_misses"] += 1
                return NOT_FOUND
            if old.cas != cas:
                self.stats["cas_badval"] += 1
                return EXISTS
            self.stats["cas_hits"] += 1
        elif old is None:  # replace, append, prepend
            return NOT_STORED
        elif mode == "append":
            value, flags, expires = old.value + value, old.flags, old.expires
            if not self.fits(key, len(value)):
                return NOT_STORED
            return self._put(key, value, flags, expires, now, "set")
        elif mode == "prepend":
            value, flags, expires = value + old.value, old.flags, old.expires
            if not self.fits(key, len(value)):
                return NOT_STORED
            return self._put(key, value, flags, expires, now, "set")
        return self._put(key, value, flags, self.expiry(exptime, now), now, "set")

    def set(self, key: bytes, value: bytes, flags: int = 0, exptime: int = 0) -> StoreResult:
        """``store("set", ...)`` for a value known to fit: the fast path of the commonest command."""
        self.stats["cmd_set"] += 1
        now = self.clock()
        return self._put(key, value, flags, self.expiry(exptime, now) if exptime else 0.0, now, "set")

    def refuse_too_large(self, mode: Mode, key: bytes) -> None:
        """Count a value over ``max_item_size``; a refused ``set`` deletes the key, as memcached does."""
        self.stats["store_too_large"] += 1
        if mode == "set":  # the old value must not stay visible after a failed set
            self.delete(key, count=False)

    def _put(self, key: bytes, value: bytes, flags: int, expires: float, now: float, event: str) -> StoreResult:
        size = len(key) + len(value) + ITEM_OVERHEAD
        if size > self.memory:
            self.stats["store_no_memory"] += 1
            return NO_MEMORY
        items = self.items
        self.last_cas = cas = self.last_cas + 1
        item = items.get(key)
        if item is None:
            item = items[key] = Item(value, flags, expires, cas, now)
            self.bytes += size
        else:  # updated in place: no new object for the garbage collector to track
            self.bytes += len(value) - len(item.value)
            item.value, item.flags, item.expires, item.cas = value, flags, expires, cas
            item.stored = item.accessed = now
            item.fetched = False
            items.move_to_end(key)
        self.stats["total_items"] += 1
        if expires:
            heapq.heappush(self._expiries, (expires, key))
        if self.bytes > self.memory:
            self._evict()
        if self.watch is not None:
            self.watch(event, key, item)
        return STORED

    def delta(self, key: bytes, amount: int, incr: bool = True) -> int | Literal["NOT_FOUND", "NON_NUMERIC"]:
        """``incr``/``decr``: the new value (64-bit: incr wraps, decr stops at 0), or why not.

        The value must be a decimal number, optionally followed by spaces. A
        result shorter than the stored value is padded with spaces to its
        length, as memcached rewrites it in place.
        """
        now = self.clock()
        item = self.peek(key, now)
        name = "incr" if incr else "decr"
        if item is None:
            self.stats[f"{name}_misses"] += 1
            return NOT_FOUND
        number = parse_u64(item.value)
        if number is None:
            return NON_NUMERIC
        self.stats[f"{name}_hits"] += 1
        number = (number + amount) & MAX_U64 if incr else max(number - amount, 0)
        digits = b"%d" % number
        if len(digits) < len(item.value):
            digits = digits.ljust(len(item.value))
        self._put(key, digits, item.flags, item.expires, now, name)
        return number

    def touch(self, key: bytes, exptime: int) -> bool:
        """Give the item a new expiry; False if there is none."""
        now = self.clock()
        item = self.peek(key, now)
        self.stats["cmd_touch"] += 1
        if item is None:
            self.stats["touch_misses"] += 1
            return False
        self.stats["touch_hits"] += 1
        item.accessed = now
        self.items.move_to_end(key)
        self._set_expiry(key, item, self.expiry(exptime, now))
        if self.watch is not None:
            self.watch("touch", key, item)
        return True

    def delete(self, key: bytes, count: bool = True) -> bool:
        """Remove the item; False if there was none."""
        item = self.peek(key)
        if item is None:
            if count:
                self.stats["delete_misses"] += 1
            return False
        if count:
            self.stats["delete_hits"] += 1
        self._drop(key, item, "delete")
        return True

    def flush(self, delay: int = 0) -> None:
        """``flush_all``: every item stored until ``delay`` seconds from now is gone from then on."""
        self.stats["cmd_flush"] += 1
        if delay > 0:
            self._flush_at = self.expiry(delay)
            return
        self._flush_at = 0.0
        if self.watch is None:
            self.items.clear()
            self._expiries.clear()
            self.bytes = 0
            return
        for key, item in list(self.items.items()):
            self._drop(key, item, "flush")
        self._expiries.clear()

    def sweep(self, now: float | None = None) -> int:
        """Drop the items whose expiry has come (and a delayed flush's); return how many went."""
        now = self.clock() if now is None else now
        dropped = 0
        heap = self._expiries
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            item = self.items.get(key)
            if item is not None and item.expires == expires:
                if not item.fetched:
                    self.stats["expired_unfetched"] += 1
                self.stats["reclaimed"] += 1
                self._drop(key, item, "expire")
                dropped += 1
        if self._flush_at and self._flush_at <= now:
            flush_at, self._flush_at = self._flush_at, 0.0
            for key, item in list(self.items.items()):
                if item.stored <= flush_at:
                    self._drop(key, item, "flush")
                    dropped += 1
        return dropped

    # -- bookkeeping -------------------------------------------------------------

    def _set_expiry(self, key: bytes, item: Item, expires: float) -> None:
        item.expires = expires
        if expires:
            heapq.heappush(self._expiries, (expires, key))

    def _drop(self, key: bytes, item: Item, event: str) -> None:
        del self.items[key]
        self.bytes -= len(key) + len(item.value) + ITEM_OVERHEAD
        if self.watch is not None:
            self.watch(event, key, None)

    def _evict(self) -> None:
        """Drop least recently used items until :attr:`bytes` is within :attr:`memory`."""
        items, stats = self.items, self.stats
        while self.bytes > self.memory and items:
            key, item = items.popitem(last=False)
            self.bytes -= len(key) + len(item.value) + ITEM_OVERHEAD
            stats["evictions"] += 1
            if not item.fetched:
                stats["evicted_unfetched"] += 1
            if self.watch is not None:
                self.watch("evict", key, None)

    def figures(self) -> dict[str, int]:
        """Items, bytes, hits, misses, evictions (and the rest of :attr:`stats`) for status pages."""
        return {"items": len(self.items), "bytes": self.bytes, "limit_bytes": self.memory,
                "hits": self.stats["get_hits"], "misses": self.stats["get_misses"],
                "evictions": self.stats["evictions"]}


def parse_u64(text: bytes) -> int | None:
    """The unsigned 64-bit decimal number ``text`` holds, as C's ``strtoull`` reads it for memcached; or None.

    Leading whitespace and one ``+`` are allowed, then digits, then nothing or
    whitespace and anything after it; a minus sign or a number past 2**64-1 is refused.
    """
    start, end = 0, len(text)
    while start < end and text[start] in b" \t\n\v\f\r":
        start += 1
    if start < end and text[start] == 0x2B:  # "+"
        start += 1
    stop = start
    while stop < end and 0x30 <= text[stop] <= 0x39:
        stop += 1
    if stop == start or (stop < end and text[stop] not in b" \t\n\v\f\r"):
        return None
    number = int(text[start:stop])
    return number if number <= MAX_U64 else None
