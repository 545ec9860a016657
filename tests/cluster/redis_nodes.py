"""Cluster engines on a test redis-server (tests/redis_servers.py), with what they delivered."""

from __future__ import annotations

import asyncio

import pytest

from coremq_broker.cluster import ClusterSettings, RedisEngine
from redis_servers import RedisServer

__all__ = ["Node", "RedisServer", "settings_for"]


def settings_for(server: RedisServer, name: str, **options: object) -> ClusterSettings:
    """Quick timings for tests: heartbeats, probes and reconnects within a second or two."""
    quick = dict(heartbeat_interval=0.2, node_timeout=1.0, probe_interval=0.2, probe_timeout=0.5,
                 command_timeout=1.0, connect_timeout=1.0, reconnect_max=0.5)
    quick.update(options)
    return ClusterSettings(redis_url=server.url, key_prefix="test:", node_name=name).with_options(**quick)


class Node:
    """A RedisEngine and what it delivered: ``deliveries``, and ``received`` as (queue, epoch, id, body, stamps)."""

    def __init__(self, server: RedisServer, name: str, **options: object) -> None:
        self.received: list[tuple[str, int, int, bytes, bytes]] = []
        self.deliveries: list = []
        self.arrived = asyncio.Event()
        self.engine = RedisEngine(settings_for(server, name, **options), address=name, on_delivery=self._on)

    def _on(self, delivery) -> None:
        self.deliveries.append(delivery)
        for index, body in enumerate(delivery.bodies):
            self.received.append((delivery.queue, delivery.epoch, delivery.first_id + index, body, delivery.stamps))
        self.arrived.set()

    def ids(self, queue: str) -> list[int]:
        return [message_id for name, _, message_id, _, _ in self.received if name == queue]

    async def wait_for(self, predicate, timeout: float = 20.0) -> None:
        """Until ``predicate()`` holds (deliveries are asynchronous); fail after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"condition not met within {timeout}s; received {len(self.received)}")
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), 0.05)
            except asyncio.TimeoutError:
                pass
