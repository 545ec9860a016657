"""The Lua script that numbers, keeps and delivers one publish batch atomically, and its payload's parser.

Redis runs a script alone: no other publish to the queue comes between the
ids being taken, the history being appended and the delivery being
published, so every node sees a queue's deliveries in id order.

A message travels as the engine seam has it (coremq_broker/core/engine.py):
its JSON ``body`` ending in its closing brace and the batch's ``stamps``
(the same for every message of a batch but the id, ending with the id's key).
The payload published on the channel, one per batch whatever its size::

    <epoch> <first id> <count>\\n<len>:<queue><len>:<origin><len>:<stamps><len>:<body>...

(``len`` in bytes, decimal). ``origin`` names the publishing node and its
batch (``<node> <n>``), so that node can tell its own batches in the stream.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLISH_SCRIPT", "Payload", "parse_payload", "PayloadError"]

# KEYS: the queue's hash (epoch, last), its history stream.
# ARGV: history length, ttl in ms (0: none), channel, queue name, direct ("1": undone unless someone
#       receives it), origin, stamps, then the bodies. History entries: 0-<id> with fields b (body),
#       s (stamps), o (origin).
# Returns {epoch, first id, receivers}; first id 0 when a direct batch reached nobody (undone).
PUBLISH_SCRIPT = r"""
local meta, log = KEYS[1], KEYS[2]
local keep, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local channel, queue, direct, origin, stamps = ARGV[3], ARGV[4], ARGV[5] == '1', ARGV[6], ARGV[7]
local n = #ARGV - 7
local state = redis.call('HMGET', meta, 'epoch', 'last')
local epoch, last = state[1], tonumber(state[2])
local created = false
if not epoch then
  -- The queue's state is gone (never made, expired, flushed, or Redis restarted without it):
  -- a new epoch, the server clock in microseconds, so it differs from any earlier one.
  local now = redis.call('TIME')
  epoch = now[1] .. string.format('%06d', tonumber(now[2]))
  last = 0
  created = true
  redis.call('DEL', log)
  redis.call('HSET', meta, 'epoch', epoch)
end
local first = last + 1
local parts = {epoch, ' ', string.format('%d', first), ' ', string.format('%d', n), '\n',
               #queue, ':', queue, #origin, ':', origin, #stamps, ':', stamps}
for i = 1, n do
  local body = ARGV[7 + i]
  if keep > 0 then
    redis.call('XADD', log, 'MAXLEN', keep, '0-' .. string.format('%d', last + i), 'b', body, 's', stamps, 'o', origin)
  end
  parts[#parts + 1] = #body
  parts[#parts + 1] = ':'
  parts[#parts + 1] = body
end
if keep == 0 then
  redis.call('DEL', log)
end
redis.call('HSET', meta, 'last', string.format('%d', last + n))
if ttl > 0 then
  redis.call('PEXPIRE', meta, ttl)
  if keep > 0 then redis.call('PEXPIRE', log, ttl) end
end
local receivers = redis.call('PUBLISH', channel, table.concat(parts))
if direct and receivers == 0 then
  -- Nobody holds the connection: nothing was seen, so nothing is kept.
  if created then
    redis.call('DEL', meta, log)
  else
    for i = 1, n do redis.call('XDEL', log, '0-' .. string.format('%d', last + i)) end
    redis.call('HSET', meta, 'last', string.format('%d', last))
  end
  return {epoch, 0, 0}
end
return {epoch, first, receivers}
"""


class PayloadError(ValueError):
    """A message on a cluster channel that this engine did not publish (or that was cut)."""


@dataclass(frozen=True)
class Payload:
    """One published batch as a channel carries it: message ``first_id + i`` is ``bodies[i]`` with ``stamps``."""

    queue: str
    epoch: int
    first_id: int
    origin: bytes
    stamps: bytes
    bodies: list[bytes]


def parse_payload(data: bytes) -> Payload:
    """The batch a publish script sent; raise :class:`PayloadError` if ``data`` is not one."""
    try:
        newline = data.index(b"\n")
        epoch, first, count = (int(part) for part in data[:newline].split(b" "))
        position = newline + 1
        items: list[bytes] = []
        for _ in range(count + 3):
            colon = data.index(b":", position)
            end = colon + 1 + int(data[position:colon])
            if end > len(data):
                raise PayloadError("a payload cut short")
            items.append(data[colon + 1:end])
            position = end
    except ValueError as exc:
        raise PayloadError(f"not a cluster payload: {exc}") from None
    if position != len(data):
        raise PayloadError("bytes after the payload's last message")
    return Payload(items[0].decode(), epoch, first, items[1], items[2], items[3:])
