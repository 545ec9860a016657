"""The names of everything the cluster keeps in Redis, in one place (docs/cluster.md draws them).

With the prefix ``P`` (``coremq:`` by default)::

    P q:<queue>:m       hash    epoch, last: the queue's numbering        expires queue_ttl after its last publish
    P q:<queue>:h       stream  its history, ids 0-<id>, capped           expires with the hash
    P node:<name>       string  a node's heartbeat (JSON)                 expires node_timeout after the last beat
    P nodes             zset    node names (score: last beat, ms)         members dropped when their key expired

and the pub/sub channels (not keys)::

    P q:<queue>         deliveries to a queue's subscribers on every node
    P c:<connection>    point-to-point: messages to a connection (or <connection>/<n>) on whichever node holds it
    P probe:<node>      the node's own pub/sub probe

Each key name ends in a fixed suffix, so no queue name can make one key collide with another.
"""

from __future__ import annotations

from coremq_client.codec import split_address

__all__ = ["Keys"]


class Keys:
    """Key and channel names under one prefix, as bytes (what redis-py sends and returns)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._p = prefix.encode()
        self.nodes = self._p + b"nodes"
        self.queue_channel_prefix = self._p + b"q:"
        self.connection_channel_prefix = self._p + b"c:"

    def meta(self, queue: str) -> bytes:
        return b"%sq:%s:m" % (self._p, queue.encode())

    def history(self, queue: str) -> bytes:
        return b"%sq:%s:h" % (self._p, queue.encode())

    def queue_channel(self, queue: str) -> bytes:
        return self.queue_channel_prefix + queue.encode()

    def connection_channel(self, connection_id: str) -> bytes:
        return self.connection_channel_prefix + connection_id.encode()

    def address_channel(self, address: str) -> bytes:
        """The channel that reaches the connection an address (``<id>`` or ``<id>/<n>``) belongs to."""
        return self.connection_channel(split_address(address)[0])

    def probe_channel(self, node: str) -> bytes:
        return b"%sprobe:%s" % (self._p, node.encode())

    def node(self, name: str) -> bytes:
        return b"%snode:%s" % (self._p, name.encode())
