"""Node heartbeats: every node says who it is and how it does, every few seconds, with expiry.

A heartbeat is a JSON document under ``<prefix>node:<name>`` that expires
``node_timeout`` seconds after it was written, and the node's name in the
``<prefix>nodes`` sorted set (scored with the time of its last beat, in ms).
A node that stops beating (killed, cut off from Redis) drops out of
:func:`list_nodes` once its key expired; one that stops cleanly removes both at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from .keys import Keys

__all__ = ["Heartbeat", "list_nodes"]

logger = logging.getLogger("coremq.cluster")


class Heartbeat:
    """Writes this node's heartbeat every ``interval`` seconds until :meth:`stop`.

    ``figures()`` gives what the node reports beside its name, address and
    uptime (connections, queues, rates, memory: whatever the broker counts);
    it runs on the loop at every beat and must not block.
    """

    def __init__(self, client: Redis, keys: Keys, name: str, address: str, *, interval: float, timeout: float,
                 figures: Callable[[], dict[str, Any]] | None = None) -> None:
        self.client = client
        self.keys = keys
        self.name = name
        self.address = address
        self.interval = interval
        self.timeout = timeout
        self.figures = figures or (lambda: {})
        self.started = time.time()
        self.beats = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def document(self) -> dict[str, Any]:
        now = time.time()
        return {**self.figures(), "name": self.name, "address": self.address, "started": self.started,
                "uptime": now - self.started, "sent": now}

    async def beat(self) -> None:
        """Write one heartbeat now; raise RedisError if Redis does not take it."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.node(self.name), json.dumps(self.document()), px=int(self.timeout * 1000))
        pipe.zadd(self.keys.nodes, {self.name: int(time.time() * 1000)})
        await pipe.execute()
        self.beats += 1

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="coremq-cluster-heartbeat")

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except (RedisError, OSError) as exc:
                self.failures += 1
                logger.warning("node %s: heartbeat not written: %s", self.name, exc)
            except Exception:  # the figures raised: the beat goes on without them next time
                self.failures += 1
                logger.exception("node %s: heartbeat failed", self.name)
            await asyncio.sleep(self.interval)

    async def stop(self, *, remove: bool = True) -> None:
        """Stop beating; with ``remove``, take this node out of the list at once (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=self.timeout)
            self._task = None
        if remove:
            try:
                pipe = self.client.pipeline(transaction=True)
                pipe.delete(self.keys.node(self.name))
                pipe.zrem(self.keys.nodes, self.name)
                await pipe.execute()
            except (RedisError, OSError) as exc:
                logger.warning("node %s: not removed from the node list: %s (it expires)", self.name, exc)


async def list_nodes(client: Redis, keys: Keys) -> list[dict[str, Any]]:
    """The heartbeats of the live nodes, by name; nodes whose heartbeat expired are removed from the set."""
    names = await client.zrange(keys.nodes, 0, -1)
    if not names:
        return []
    documents = await client.mget([keys.node(name.decode()) for name in names])
    nodes, gone = [], []
    for name, document in zip(names, documents):
        if document is None:
            gone.append(name)
            continue
        try:
            nodes.append(json.loads(document))
        except ValueError:
            gone.append(name)
    if gone:
        await client.zrem(keys.nodes, *gone)
    return sorted(nodes, key=lambda node: str(node.get("name")))
