"""memcached 1.6's text protocol onto the store (:mod:`coremq_broker.store`).

:class:`MemcachedSession` is sans-I/O: :meth:`~MemcachedSession.receive` takes
the bytes a client sent (any split, any amount of pipelining) and returns the
bytes to answer, in order; it never raises for bad input. Every answer,
including the error strings and where the connection is kept, is memcached's
own (tests/store compares them byte for byte with a real memcached).
:class:`MemcachedServer` is the thin asyncio listener around it; it pauses
reading a client while its answers are not being read (asyncio's flow control).

Commands: ``set add replace append prepend cas get gets gat gats delete incr
decr touch flush_all stats version verbosity quit`` and the meta commands
``mg ms md ma mn`` (see docs/store.md for the flags).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..store.config import StoreConfig
from ..store.redis_store import RedisStore
from ..store.store import (
    EXISTS, MAX_U64, NON_NUMERIC, NOT_FOUND, NOT_STORED, STORED, TOO_LARGE, Store,
)
from ..store.watch import broker_watch

__all__ = ["MemcachedSession", "MemcachedServer", "MemcachedService", "VERSION", "KEY_MAX_LENGTH", "LINE_MAX_LENGTH"]

logger = logging.getLogger("coremq.memcached")

#: What ``version`` answers: the memcached release whose protocol this follows.
VERSION = b"1.6.18"
KEY_MAX_LENGTH = 250
#: A line without its newline past this many bytes closes the connection (a ``get`` of many keys may be longer).
LINE_MAX_LENGTH = 2048
#: memcached splits a command into at most this many tokens (the last one holds the rest of the line).
MAX_TOKENS = 24
_LARGE_GET_MAX = 1 << 20  # a get line's bytes at most before its newline

ERROR = b"ERROR\r\n"
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
TOO_LARGE_REPLY = b"SERVER_ERROR object too large for cache\r\n"
NO_MEMORY_REPLY = b"SERVER_ERROR out of memory storing object\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
NON_NUMERIC_REPLY = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
BAD_DELETE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
BAD_FLAG = b"CLIENT_ERROR invalid flag\r\n"
DUPLICATE_FLAG = b"CLIENT_ERROR duplicate flag\r\n"
BAD_OR_DUPLICATE_FLAG = b"CLIENT_ERROR invalid or duplicate flag\r\n"  # md and ma say this for both
BAD_TOKEN = b"CLIENT_ERROR bad token in command line format\r\n"
BAD_KEY_ENCODING = b"CLIENT_ERROR error decoding key\r\n"
_STORE_REPLIES = {STORED: b"STORED\r\n", NOT_STORED: b"NOT_STORED\r\n", EXISTS: b"EXISTS\r\n",
                  NOT_FOUND: b"NOT_FOUND\r\n", TOO_LARGE: TOO_LARGE_REPLY, "NO_MEMORY": NO_MEMORY_REPLY}
_META_STORE_REPLIES = {STORED: b"HD", NOT_STORED: b"NS", EXISTS: b"EX", NOT_FOUND: b"NF"}
_MS_MODES = {b"S": "set", b"s": "set", b"E": "add", b"e": "add", b"A": "append", b"a": "append",
             b"P": "prepend", b"p": "prepend", b"R": "replace", b"r": "replace"}
_MA_MODES = {b"I": True, b"i": True, b"+": True, b"D": False, b"d": False, b"-": False}
_MG_FLAGS = frozenset(b"bcfhklOqstvT")
_MS_FLAGS = frozenset(b"bcCFIkOqsTM")
_MD_FLAGS = frozenset(b"bCIkOqT")
_MA_FLAGS = frozenset(b"bCNJDTMqOktcv")
_SPACE = b" "


# -- numbers as memcached's safe_strto* read them -------------------------------

def _strtoll(token: bytes) -> int | None:
    """C's ``strtol``/``strtoull`` on a whole token: sign, digits; None if not a number or past 64 bits."""
    negative = token[:1] == b"-"
    digits = token[1:] if token[:1] in (b"-", b"+") else token
    if not digits.isdigit() or not digits.isascii():
        return None
    value = int(digits)
    if value > MAX_U64:
        return None
    return -value if negative else value


def _int32(token: bytes) -> int | None:
    """``safe_strtol`` into a 32-bit int (C truncation), as memcached reads exptimes and lengths."""
    value = _strtoll(token)
    if value is None or not -2**63 <= value < 2**63:
        return None
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _uint32(token: bytes) -> int | None:
    """``safe_strtoul`` into 32 bits, as memcached reads client flags (a negative number is refused)."""
    value = _strtoll(token)
    if value is None or value < 0 and value != 0:
        return None
    return value & 0xFFFFFFFF


def _uint64(token: bytes) -> int | None:
    """``safe_strtoull``: deltas and CAS ids."""
    value = _strtoll(token)
    return None if value is None or value < 0 else value


def _key_echo(tokens: list[bytes], key: bytes, binary: bool) -> bytes:
    """The ``k`` of a meta reply: the key as sent, or a base64 key re-encoded from what it decoded to."""
    return b"k" + base64.b64encode(key) + b" b" if binary else b"k" + tokens[1]


_MD_NUMBERS = {67: _uint64, 84: _int32}  # C, T
_MA_NUMBERS = {67: _uint64, 78: _int32, 74: _uint64, 68: _uint64, 84: _int32}  # C, N, J, D, T
_BASE64 = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _base64_key(text: bytes) -> bytes | None:
    """A ``b`` key decoded as memcached does, or None: bytes outside the alphabet are skipped, the
    rest must come in blocks of four, and decoding stops after the first block with ``=``."""
    chars = [c for c in text if c in _BASE64 or c == 61]
    if not chars or len(chars) % 4:
        return None
    out = bytearray()
    for i in range(0, len(chars), 4):
        block = chars[i:i + 4]
        number = 0
        for c in block:
            number = number << 6 | _BASE64.get(c, 0)
        out += number.to_bytes(3, "big")
        pad = block.count(61)
        if pad:
            if pad > 2:
                return None
            del out[len(out) - pad:]
            break
    return bytes(out) or None


#: Commands in their plainest form (printable key, small numbers, CRLF), parsed in one step; all else
#: takes the general path, which answers them the same.
_PLAIN_SET = re.compile(rb"set ([!-~]{1,250}) (\d{1,9}) (\d{1,9}) (\d{1,7})( noreply)?\r\n").match
_PLAIN_GET = re.compile(rb"get ([!-~]{1,250})\r\n").match


def _tokens(line: bytes) -> list[bytes]:
    """memcached's tokens: separated by spaces, with no empty ones (runs, leading and trailing spaces)."""
    return [token for token in line.split(_SPACE) if token] \
        if b"  " in line or line[:1] == _SPACE or line[-1:] == _SPACE else line.split(_SPACE) if line else []


def _ntokens(tokens: list[bytes]) -> int:
    """memcached's token count: the tokens (at most 23, the rest is one more) and its end marker."""
    return min(len(tokens), MAX_TOKENS - 1) + 1


class MemcachedSession:
    """One client's conversation: bytes in, answer bytes out, in order (sans-I/O)."""

    def __init__(self, store: Store, *, stats: Callable[[], dict[str, Any]] | None = None,
                 max_output: int = 4 * 2**20) -> None:
        self.store = store
        #: Bytes of values one call of :meth:`receive` answers at most; the commands after them wait in
        #: the buffer for the next call (:attr:`waiting`), so output is bounded whatever one read asked.
        self.max_output = max_output
        self.values_out = 0
        self.extra_stats = stats
        #: The client said ``quit`` or sent a line too long: close once the answer is written.
        self.closed = False
        self._buffer = b""
        self._pending: tuple | None = None  # a storage command waiting for its data block
        self._swallow = 0  # bytes of a refused data block still to skip
        self._noreply = False
        self._discard = False
        self._flush = False
        self._written = 0  # answers of this read memcached would have written already
        self.commands = {
            b"get": self._get, b"gets": self._gets, b"gat": self._gat, b"gats": self._gats,
            b"set": self._set, b"add": self._add, b"replace": self._replace, b"append": self._append,
            b"prepend": self._prepend, b"cas": self._cas, b"delete": self._delete, b"incr": self._incr,
            b"decr": self._decr, b"touch": self._touch, b"flush_all": self._flush_all, b"stats": self._stats,
            b"version": self._version, b"verbosity": self._verbosity, b"quit": self._quit,
            b"mg": self._mg, b"ms": self._ms, b"md": self._md, b"ma": self._ma, b"mn": self._mn,
        }

    @property
    def waiting(self) -> bool:
        """Commands are buffered that a call of ``receive(b"")`` would carry out (output was at its bound)."""
        return bool(self._buffer) and self.values_out >= self.max_output and not self.closed

    def receive(self, data: bytes) -> bytes:
        """Take what the client sent; return the answers to the commands it completed, up to ``max_output``."""
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        self._written = self.values_out = 0
        position = 0
        size = len(buffer)
        while position < size and not self.closed and self.values_out < self.max_output:
            if self._swallow:
                taken = min(self._swallow, size - position)
                self._swallow -= taken
                position += taken
                continue
            if self._pending is not None:
                need = self._pending[-1] + 2
                if size - position < need:
                    break
                complete, arguments, length = self._pending
                self._pending = None
                complete(buffer[position:position + need], length, *arguments, out)
                position += need
                continue
            if buffer[position] == 0x73:  # the common shapes first: "set <key> <n> <n> <n>[ noreply]\r\n<data>\r\n"
                match = _PLAIN_SET(buffer, position)
                if match is not None:
                    key, flags, exptime, length, noreply = match.groups()
                    start = match.end()
                    stop = start + int(length)
                    if stop + 2 <= size and buffer[stop:stop + 2] == b"\r\n" and self.store.fits(key, stop - start):
                        result = self.store.set(key, buffer[start:stop], int(flags), int(exptime))
                        if noreply is None:
                            out.append(_STORE_REPLIES[result])
                        position = stop + 2
                        continue
            elif buffer[position] == 0x67:  # "get <key>\r\n"
                match = _PLAIN_GET(buffer, position)
                if match is not None:
                    key = match.group(1)
                    item = self.store.get(key)
                    if item is None:
                        out.append(b"END\r\n")
                    else:
                        out.append(b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, item.flags, len(item.value),
                                                                         item.value))
                        self.values_out += len(item.value)
                    self._written = len(out)
                    position = match.end()
                    continue
            end = buffer.find(b"\n", position)
            if end < 0:
                if size - position > LINE_MAX_LENGTH and not self._long_line_allowed(buffer, position, size):
                    self.closed = True
                    position = size
                break
            line = buffer[position:end - 1] if end > position and buffer[end - 1] == 13 else buffer[position:end]
            position = end + 1
            self._command(line, out)
            if self._discard:  # a get with a key too long: memcached drops the answers not yet written
                del out[self._written:-1]
                self._discard = False
            elif self._flush:  # memcached writes out after each get that succeeds
                self._written, self._flush = len(out), False
        self._buffer = buffer[position:] if position < size and not self.closed else b""
        return b"".join(out)

    def _long_line_allowed(self, buffer: bytes, position: int, size: int) -> bool:
        """memcached keeps reading a long line only if it is a ``get``/``gets`` (many keys)."""
        start = buffer[position:position + 200]
        head = start.lstrip(_SPACE)
        return (head.startswith((b"get ", b"gets ")) and len(start) - len(head) <= 100
                and size - position <= _LARGE_GET_MAX)

    def _command(self, line: bytes, out: list[bytes]) -> None:
        tokens = _tokens(line)
        if not tokens or len(tokens[0]) < 2:
            out.append(ERROR)
            return
        handler = self.commands.get(tokens[0])
        if handler is None:
            out.append(ERROR)
            return
        self._noreply = False
        reply = handler(tokens, _ntokens(tokens))
        if reply and not self._noreply:
            out.append(reply)

    def _set_noreply(self, tokens: list[bytes], ntokens: int) -> bool:
        self._noreply = tokens[ntokens - 2] == b"noreply" if ntokens >= 2 and ntokens - 2 < len(tokens) else False
        return self._noreply

    # -- retrieval -------------------------------------------------------------------

    def _get(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._retrieve(tokens, ntokens, 1, False, None)

    def _gets(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._retrieve(tokens, ntokens, 1, True, None)

    def _gat(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._touching_retrieve(tokens, ntokens, False)

    def _gats(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._touching_retrieve(tokens, ntokens, True)

    def _touching_retrieve(self, tokens: list[bytes], ntokens: int, with_cas: bool) -> bytes:
        if ntokens < 3:
            return ERROR
        exptime = _int32(tokens[1])
        if exptime is None:
            return BAD_EXPTIME
        return self._retrieve(tokens, ntokens, 2, with_cas, exptime)

    def _retrieve(self, tokens: list[bytes], ntokens: int, first: int, with_cas: bool, touch: int | None) -> bytes:
        if ntokens < 3:
            return ERROR
        get = self.store.get
        parts: list[bytes] = []
        for key in tokens[first:]:
            if len(key) > KEY_MAX_LENGTH:
                self._discard = True
                return BAD_FORMAT
            item = get(key, touch)
            if item is not None:
                if with_cas:
                    parts.append(b"VALUE %s %d %d %d\r\n%s\r\n" % (key, item.flags, len(item.value), item.cas,
                                                                    item.value))
                else:
                    parts.append(b"VALUE %s %d %d\r\n%s\r\n" % (key, item.flags, len(item.value), item.value))
                self.values_out += len(item.value)
        parts.append(b"END\r\n")
        self._flush = True
        return b"".join(parts)

    # -- storage ---------------------------------------------------------------------

    def _set(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._storage(tokens, ntokens, "set")

    def _add(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._storage(tokens, ntokens, "add")

    def _replace(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._storage(tokens, ntokens, "replace")

    def _append(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._storage(tokens, ntokens, "append")

    def _prepend(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._storage(tokens, ntokens, "prepend")

    def _cas(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._storage(tokens, ntokens, "cas")

    def _storage(self, tokens: list[bytes], ntokens: int, mode: str) -> bytes:
        with_cas = mode == "cas"
        if ntokens not in ((7, 8) if with_cas else (6, 7)):
            return ERROR
        self._set_noreply(tokens, ntokens)
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        flags, exptime, length = _uint32(tokens[2]), _int32(tokens[3]), _int32(tokens[4])
        if flags is None or exptime is None or length is None:
            return BAD_FORMAT
        cas = 0
        if with_cas:
            cas = _uint64(tokens[5])
            if cas is None:
                return BAD_FORMAT
        if length < 0 or length > 2**31 - 3:
            return BAD_FORMAT
        if not self.store.fits(key, length):
            self.store.refuse_too_large(mode, key)  # type: ignore[arg-type]
            self._swallow = length + 2
            return TOO_LARGE_REPLY
        self._pending = (self._complete_store, (self._noreply, mode, key, flags, exptime, cas), length)
        return b""

    def _complete_store(self, block: bytes, length: int, noreply: bool, mode: str, key: bytes, flags: int,
                        exptime: int, cas: int, out: list[bytes]) -> None:
        if block[length:] != b"\r\n":
            if not noreply:
                out.append(BAD_CHUNK)
            return
        result = self.store.store(mode, key, block[:length], flags, exptime, cas)  # type: ignore[arg-type]
        if not noreply:
            out.append(_STORE_REPLIES[result])

    # -- other commands --------------------------------------------------------------

    def _delete(self, tokens: list[bytes], ntokens: int) -> bytes:
        if not 3 <= ntokens <= 5:
            return ERROR
        if ntokens > 3:
            hold_is_zero = tokens[2] == b"0"
            noreply = self._set_noreply(tokens, ntokens)
            if not ((ntokens == 4 and (hold_is_zero or noreply)) or (ntokens == 5 and hold_is_zero and noreply)):
                return BAD_DELETE
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        return b"DELETED\r\n" if self.store.delete(key) else b"NOT_FOUND\r\n"

    def _incr(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._arithmetic(tokens, ntokens, True)

    def _decr(self, tokens: list[bytes], ntokens: int) -> bytes:
        return self._arithmetic(tokens, ntokens, False)

    def _arithmetic(self, tokens: list[bytes], ntokens: int, incr: bool) -> bytes:
        if ntokens not in (4, 5):
            return ERROR
        self._set_noreply(tokens, ntokens)
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        delta = _uint64(tokens[2])
        if delta is None:
            return BAD_DELTA
        result = self.store.delta(key, delta, incr)
        if result == NOT_FOUND:
            return b"NOT_FOUND\r\n"
        if result == NON_NUMERIC:
            return NON_NUMERIC_REPLY
        return b"%d\r\n" % result

    def _touch(self, tokens: list[bytes], ntokens: int) -> bytes:
        if ntokens not in (4, 5):
            return ERROR
        self._set_noreply(tokens, ntokens)
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        exptime = _int32(tokens[2])
        if exptime is None:
            return BAD_EXPTIME
        return b"TOUCHED\r\n" if self.store.touch(key, exptime) else b"NOT_FOUND\r\n"

    def _flush_all(self, tokens: list[bytes], ntokens: int) -> bytes:
        if not 2 <= ntokens <= 4:
            return ERROR
        noreply = self._set_noreply(tokens, ntokens)
        delay = 0
        if ntokens != (3 if noreply else 2):
            delay = _int32(tokens[1])
            if delay is None:
                return BAD_EXPTIME
        self.store.flush(delay)
        return b"OK\r\n"

    def _version(self, tokens: list[bytes], ntokens: int) -> bytes:
        return b"VERSION %s\r\n" % VERSION

    def _verbosity(self, tokens: list[bytes], ntokens: int) -> bytes:
        if ntokens not in (3, 4):
            return ERROR
        self._set_noreply(tokens, ntokens)
        if _uint32(tokens[1]) is None:
            return BAD_FORMAT
        return b"OK\r\n"

    def _quit(self, tokens: list[bytes], ntokens: int) -> bytes:
        self.closed = True
        return b""

    def _stats(self, tokens: list[bytes], ntokens: int) -> bytes:
        store = self.store
        if ntokens == 2:
            values: dict[str, Any] = {
                "pid": os.getpid(), "uptime": int(time.time() - store.started), "time": int(time.time()),
                "version": VERSION.decode(), "pointer_size": 64,
                **(self.extra_stats() if self.extra_stats is not None else {}),
                **store.stats, "curr_items": len(store.items), "bytes": store.bytes,
                "limit_maxbytes": store.memory,
            }
        elif tokens[1] == b"settings":
            values = {"maxbytes": store.memory, "item_size_max": store.max_item_size, "evictions": "on",
                      "cas_enabled": "yes", "flush_enabled": "yes"}
        elif tokens[1] == b"items":
            values = {} if not store.items else {"items:1:number": len(store.items),
                                                 "items:1:evicted": store.stats["evictions"]}
        elif tokens[1] == b"slabs":
            values = {"active_slabs": 1 if store.items else 0, "total_malloced": store.bytes}
        else:
            return ERROR
        lines = [b"STAT %s %s\r\n" % (name.encode(), str(value).encode()) for name, value in values.items()]
        return b"".join(lines) + b"END\r\n"

    # -- meta commands ---------------------------------------------------------------

    def _mn(self, tokens: list[bytes], ntokens: int) -> bytes:
        return b"MN\r\n"

    def _meta_key(self, tokens: list[bytes], allowed: frozenset[int], invalid: bytes = BAD_FLAG,
                  duplicate: bytes = DUPLICATE_FLAG,
                  numbers: dict[int, Callable[[bytes], int | None]] | None = None,
                  bad_key: bytes = BAD_KEY_ENCODING) -> tuple[bytes, dict[int, bytes]] | bytes:
        """The key and the flags (first byte -> the rest of the token) of a meta command, or the error reply.

        As memcached: a key token over 250 bytes (base64 or not) is refused first; then the first
        unknown or repeated flag, in the request's order, or (``numbers``: md's and ma's numeric
        flags and their parsers) one whose number does not parse; then a base64 key that does not decode.
        """
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        flags: dict[int, bytes] = {}
        for token in tokens[2:]:
            if token[0] not in allowed:
                return invalid
            if token[0] in flags:
                return duplicate
            if numbers is not None and token[0] in numbers and numbers[token[0]](token[1:]) is None:
                return invalid
            flags[token[0]] = token[1:]
        key = tokens[1]
        if 98 in flags:  # b: the key is base64
            key = _base64_key(key)  # type: ignore[assignment]
            if key is None:
                return bad_key
        if len(key) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        return key, flags

    @staticmethod
    def _echo(tokens: list[bytes], key: bytes, only: bytes = b"Ok") -> list[bytes]:
        """The flags a reply repeats from the request (opaque, key), in the request's order."""
        parts = []
        for token in tokens[2:]:
            if token[0] in only:
                binary = any(t[0] == 98 for t in tokens[2:])
                parts.append(token if token[0] == 79 else _key_echo(tokens, key, binary))
        return parts

    def _mg(self, tokens: list[bytes], ntokens: int) -> bytes:
        if ntokens < 3:
            return ERROR
        parsed = self._meta_key(tokens, _MG_FLAGS)
        if isinstance(parsed, bytes):
            return parsed
        key, flags = parsed
        touch = None
        if 84 in flags:  # T: a new TTL
            touch = _int32(flags[84])
            if touch is None:
                return BAD_TOKEN
        before = self.store.peek(key)
        fetched, accessed = (before.fetched, before.accessed) if before is not None else (False, 0.0)
        item = self.store.get(key, touch)
        if item is None:
            if 113 in flags:  # q: a miss says nothing
                return b""
            return b" ".join([b"EN", *self._echo(tokens, key)]) + b"\r\n"
        now = time.time()
        parts: list[bytes] = []
        for token in tokens[2:]:
            flag = token[0]
            if flag == 99:
                parts.append(b"c%d" % item.cas)
            elif flag == 102:
                parts.append(b"f%d" % item.flags)
            elif flag == 104:
                parts.append(b"h%d" % fetched)
            elif flag == 107:
                parts.append(b"k" + tokens[1] + (b" b" if 98 in flags else b""))
            elif flag == 108:
                parts.append(b"l%d" % max(int(now - accessed), 0))
            elif flag == 79:
                parts.append(token)
            elif flag == 115:
                parts.append(b"s%d" % len(item.value))
            elif flag == 116:
                parts.append(b"t%d" % item.ttl(now))
        if 118 in flags:
            self.values_out += len(item.value)
            return b" ".join([b"VA %d" % len(item.value), *parts]) + b"\r\n" + item.value + b"\r\n"
        return b" ".join([b"HD", *parts]) + b"\r\n"

    def _ms(self, tokens: list[bytes], ntokens: int) -> bytes:
        if ntokens < 3:
            return ERROR
        if ntokens < 4 or len(tokens[1]) > KEY_MAX_LENGTH:
            return BAD_FORMAT
        length = _int32(tokens[2])
        if length is None or length < 0:
            return BAD_FORMAT
        flags: dict[int, bytes] = {}
        error = None
        for token in tokens[3:]:
            if token[0] not in _MS_FLAGS:
                error = error or BAD_FLAG
            elif token[0] in flags:
                error = error or DUPLICATE_FLAG
            flags[token[0]] = token[1:]
        key = tokens[1]
        if error is None and 98 in flags:
            key = _base64_key(key)  # type: ignore[assignment]
            if key is None:
                error = BAD_KEY_ENCODING
        mode, client_flags, exptime, cas = "set", 0, 0, 0
        # memcached reads T and C first (in the request's order), then F, then M
        for token in tokens[3:] if error is None else ():
            if token[0] == 84:
                exptime = _int32(token[1:])
                error = BAD_TOKEN if exptime is None else None
            elif token[0] == 67:
                cas = _uint64(token[1:])
                error = BAD_TOKEN if cas is None else None
            if error is not None:
                break
        if error is None and 70 in flags:
            client_flags = _uint32(flags[70])
            if client_flags is None:
                error = BAD_FORMAT
        if error is None and 77 in flags:
            mode = _MS_MODES.get(flags[77][:1])
            if mode is None or len(flags[77]) != 1:
                error = b"CLIENT_ERROR invalid mode for ms M token\r\n"
        if error is None and 67 in flags and mode == "set":
            mode = "cas"
        if error is None and not self.store.fits(key, length):
            error = TOO_LARGE_REPLY
            self.store.refuse_too_large(mode, key)  # type: ignore[arg-type]
        if error is not None:
            self._swallow = length + 2
            return error
        self._pending = (self._complete_meta_store, (tokens, key, flags, mode, client_flags, exptime, cas), length)
        return b""

    def _complete_meta_store(self, block: bytes, length: int, tokens: list[bytes], key: bytes,
                             flags: dict[int, bytes], mode: str, client_flags: int, exptime: int, cas: int,
                             out: list[bytes]) -> None:
        if block[length:] != b"\r\n":
            out.append(BAD_CHUNK)
            return
        result = self.store.store(mode, key, block[:length], client_flags, exptime, cas)  # type: ignore[arg-type]
        if result == STORED and 113 in flags:
            return
        if result not in _META_STORE_REPLIES:
            out.append(_STORE_REPLIES[result])
            return
        parts = [_META_STORE_REPLIES[result]]
        item = self.store.items.get(key) if result == STORED else None
        for token in tokens[3:]:
            flag = token[0]
            if flag == 79:
                parts.append(token)
            elif flag == 107:
                parts.append(_key_echo(tokens, key, 98 in flags))
            elif flag == 99 and item is not None:
                parts.append(b"c%d" % item.cas)
        out.append(b" ".join(parts) + b"\r\n")

    def _md(self, tokens: list[bytes], ntokens: int) -> bytes:
        if ntokens < 3:
            return ERROR
        parsed = self._meta_key(tokens, _MD_FLAGS, BAD_OR_DUPLICATE_FLAG, BAD_OR_DUPLICATE_FLAG, _MD_NUMBERS,
                                BAD_OR_DUPLICATE_FLAG)
        if isinstance(parsed, bytes):
            return parsed
        key, flags = parsed
        item = self.store.peek(key)
        if item is None:
            code = b"NF"
        elif 67 in flags and _uint64(flags[67]) != item.cas:
            code = b"EX"
        else:
            self.store.delete(key)
            if 113 in flags:
                return b""
            code = b"HD"
        return b" ".join([code, *self._echo(tokens, key)]) + b"\r\n"

    def _ma(self, tokens: list[bytes], ntokens: int) -> bytes:
        if ntokens < 3:
            return ERROR
        parsed = self._meta_key(tokens, _MA_FLAGS, BAD_OR_DUPLICATE_FLAG, BAD_OR_DUPLICATE_FLAG, _MA_NUMBERS,
                                BAD_OR_DUPLICATE_FLAG)
        if isinstance(parsed, bytes):
            return parsed
        key, flags = parsed
        incr, delta, initial, vivify = True, 1, 0, None
        if 77 in flags:
            incr = _MA_MODES.get(flags[77])  # type: ignore[assignment]
            if incr is None:
                return b"CLIENT_ERROR invalid mode for ma M token\r\n"
        for flag, name in ((68, "delta"), (74, "initial")):
            if flag in flags:
                number = _uint64(flags[flag])
                if number is None:
                    return b"CLIENT_ERROR invalid or duplicate flag\r\n"
                if flag == 68:
                    delta = number
                else:
                    initial = number
        for flag in (78, 84):
            if flag in flags and _int32(flags[flag]) is None:
                return BAD_TOKEN
        if 78 in flags:
            vivify = _int32(flags[78])
        store = self.store
        item = store.peek(key)
        if item is None:
            if vivify is None:
                store.delta(key, delta, incr)  # counted as a miss
                return b" ".join([b"NF", *self._echo(tokens, key)]) + b"\r\n"
            store.store("add", key, b"%d" % initial, 0, vivify)
            number = initial
        elif 67 in flags and _uint64(flags[67]) not in (0, item.cas):  # C0: no compare
            return b" ".join([b"EX", *self._echo(tokens, key)]) + b"\r\n"
        else:
            result = store.delta(key, delta, incr)
            if result == NON_NUMERIC:
                return NON_NUMERIC_REPLY
            number = result  # type: ignore[assignment]
            if 84 in flags:
                store.touch(key, _int32(flags[84]))  # type: ignore[arg-type]
        item = store.items[key]
        if 113 in flags and 118 not in flags:
            return b""
        now = time.time()
        parts: list[bytes] = []
        for token in tokens[2:]:
            flag = token[0]
            if flag == 79:
                parts.append(token)
            elif flag == 107:
                parts.append(_key_echo(tokens, key, 98 in flags))
            elif flag == 99:
                parts.append(b"c%d" % item.cas)
            elif flag == 116:
                parts.append(b"t%d" % item.ttl(now))
        if 118 in flags:
            value = b"%d" % number
            return b" ".join([b"VA %d" % len(value), *parts]) + b"\r\n" + value + b"\r\n"
        return b" ".join([b"HD", *parts]) + b"\r\n"


class _Connection(asyncio.Protocol):
    """One client socket: bytes to the session, answers back; reading pauses while writing is paused."""

    def __init__(self, server: "MemcachedServer") -> None:
        self.server = server
        self.session = MemcachedSession(server.store, stats=server.stats)
        self.transport: asyncio.Transport | None = None
        self._paused_writing = False
        self._inbox = bytearray()  # a blocking store: what came while the worker thread had the session
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= server.max_connections:
            server.refused += 1
            transport.close()
            return
        server.connections.add(self)
        server.total_connections += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        if self.server.executor is not None:
            self._offload(data)
            return
        try:
            answer = self.session.receive(data)
        except Exception:  # a bug must cost this connection only
            logger.exception("memcached connection: closing after an internal error")
            answer = b"SERVER_ERROR internal error\r\n"
            self.session.closed = True
        transport = self.transport
        if transport is None:
            return
        if answer:
            transport.write(answer)
        if self.session.closed:
            transport.close()
        elif self.session.waiting and not self._paused_writing:
            asyncio.get_running_loop().call_soon(self._continue)  # the rest after other clients' turn

    def _continue(self) -> None:
        if self.transport is not None and self.session.waiting and not self._paused_writing:
            self.data_received(b"")

    # A blocking store (Redis, several nodes): the session runs in a worker thread, one read of a
    # connection at a time (its commands stay in order); the connection is not read meanwhile.

    def _offload(self, data: bytes) -> None:
        self._inbox += data
        transport = self.transport
        if self._busy or transport is None:
            return
        self._busy = True
        transport.pause_reading()
        chunk, self._inbox = bytes(self._inbox), bytearray()
        future = asyncio.get_running_loop().run_in_executor(self.server.executor, self.session.receive, chunk)
        future.add_done_callback(self._received)

    def _received(self, future: "asyncio.Future[bytes]") -> None:
        self._busy = False
        transport = self.transport
        if transport is None:
            return
        try:
            answer = future.result()
        except Exception:  # a bug, or the store's Redis unreachable: this connection only
            logger.exception("memcached connection: closing after an internal error")
            answer = b"SERVER_ERROR internal error\r\n"
            self.session.closed = True
        if answer:
            transport.write(answer)
        if self.session.closed:
            transport.close()
        elif not self._paused_writing:
            self._next()

    def _next(self) -> None:
        if self._inbox or self.session.waiting:
            self._offload(b"")
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self._paused_writing = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self.server.executor is not None:
            if not self._busy and self.transport is not None:
                self._next()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            if self.session.waiting:
                self._continue()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None


class MemcachedServer:
    """The memcached listener of one :class:`Store` on the running loop (or one to come: :meth:`bind`)."""

    def __init__(self, store: Store, *, max_connections: int = 1024, sweep_interval: float = 1.0) -> None:
        self.store = store
        self.max_connections = max_connections
        self.sweep_interval = sweep_interval
        #: Worker threads for a store that blocks (:class:`~coremq_broker.store.redis_store.RedisStore`).
        self.executor = (ThreadPoolExecutor(max_workers=16, thread_name_prefix="coremq-store")
                         if getattr(store, "blocking", False) else None)
        self.connections: set[_Connection] = set()
        self.total_connections = 0
        self.refused = 0
        self.host = ""
        self.port = 0
        self._socket: socket.socket | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen now (so a busy port fails at once); return the bound address. Serve with :meth:`serve`."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.host, self.port = sock.getsockname()[:2]
        return self.host, self.port

    async def serve(self) -> None:
        """Start accepting on the bound socket (binding ``127.0.0.1:0`` if :meth:`bind` was not called)."""
        if self._socket is None:
            self.bind("127.0.0.1", 0)
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(lambda: _Connection(self), sock=self._socket)
        self._sweeper = self._loop.call_later(self.sweep_interval, self._sweep)

    def start_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Schedule :meth:`serve` on ``loop`` (running or about to run): ``run_coremq``'s start-up hook."""
        self._task = loop.create_task(self.serve())

    def _sweep(self) -> None:
        try:
            self.store.sweep()
        except Exception:
            logger.exception("store: the expiry sweep failed")
        if self._loop is not None and self._server is not None:
            self._sweeper = self._loop.call_later(self.sweep_interval, self._sweep)

    def stats(self) -> dict[str, Any]:
        """Connection figures, for ``stats`` and the status page."""
        return {"curr_connections": len(self.connections), "total_connections": self.total_connections,
                "rejected_connections": self.refused, "max_connections": self.max_connections}

    def close(self) -> None:
        """Stop accepting and close every client. Idempotent; needs no running loop."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._socket is not None:
            self._socket.close()
        self._socket = None
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        self.connections.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> "MemcachedServer":
        await self.serve()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()



class MemcachedService:
    """The store and its memcached listener beside a broker: ``run_coremq`` attaches it when the broker starts.

    :meth:`attach` binds at once (a busy port raises ``OSError`` before
    anything is served), announces the address, serves on the broker's loop,
    and returns the function that closes the listener. Changes of keys are
    published to the broker's queues (:func:`coremq_broker.store.broker_watch`)
    when ``config.memcached_watch`` is on.
    """

    _running: "MemcachedService | None" = None

    def __init__(self, config: StoreConfig, *, port: int | None = None, required: bool = True,
                 announce: Callable[[str, str, int], None] | None = None, redis_url: str | None = None,
                 key_prefix: str = "coremq:") -> None:
        self.config = config
        self.port = config.memcached_port if port is None else port
        #: False: a port that is taken is announced as ``memcached-unavailable`` and the broker runs on.
        self.required = required
        self.announce = announce
        self._broker: Any = None
        watch = broker_watch(lambda: self._broker, config.memcached_watch_prefix) if config.memcached_watch else None
        #: With ``redis_url`` (several nodes) the keys live in Redis (docs/store.md, *Several nodes*).
        self.store: Any = (Store(config.memcached_memory, max_item_size=config.memcached_max_item_size, watch=watch)
                           if redis_url is None else
                           RedisStore(redis_url, key_prefix, max_item_size=config.memcached_max_item_size, watch=watch))
        self.server = MemcachedServer(self.store, max_connections=config.memcached_max_connections)

    @classmethod
    def running(cls) -> "MemcachedService | None":
        """The service attached last in this process and not yet stopped (the status page reads it)."""
        return cls._running

    def attach(self, broker: Any) -> Callable[[], None]:
        if getattr(self.store, "blocking", False) and self.store.watch is not None:
            self.store.watch = self._cluster_watch(broker, self.store.watch)
        try:
            host, port = self.server.bind(broker.host, self.port)
        except OSError:
            if self.required:
                raise
            logger.warning("store not served: %s:%d is taken", broker.host, self.port)
            if self.announce is not None:
                self.announce("memcached-unavailable", broker.host, self.port)
            return self.stop
        self._broker = broker
        self.server.start_on(broker.loop)
        MemcachedService._running = self
        if self.announce is not None:
            self.announce("memcached", host, port)
        return self.stop

    def _cluster_watch(self, broker: Any, watch: Callable[..., None]) -> Callable[..., None]:
        """The watch of a store in Redis: changes are made in worker threads and published on the loop;
        a key whose queue this node does not hold is published when subscribers on another node listen."""
        prefix, store = self.config.memcached_watch_prefix, self.store

        def publish(event: str, key: bytes, item: Any, queue: str | None) -> None:
            if queue is not None and queue not in broker.registry.queues:
                try:
                    broker.registry.queue(queue)
                except Exception:  # a bound (MAX_QUEUES): this change is not published
                    logger.warning("store watch: queue %r not made for a change", queue)
                    return
            watch(event, key, item)

        def threadsafe(event: str, key: bytes, item: Any) -> None:
            try:
                queue: str | None = prefix + key.decode("utf-8")
            except UnicodeDecodeError:
                return
            if queue in broker.registry.queues or not store.listened(queue):
                queue = None
            broker.loop.call_soon_threadsafe(publish, event, key, item, queue)

        return threadsafe

    def stop(self) -> None:
        self.server.close()
        self._broker = None
        if MemcachedService._running is self:
            MemcachedService._running = None

    def figures(self) -> dict[str, Any]:
        """Items, bytes, hits, misses, evictions and connections, for the status page and ``/metrics``."""
        return {**self.store.figures(), "connections": len(self.server.connections),
                "connections_total": self.server.total_connections,
                "address": f"{self.server.host}:{self.server.port}"}
