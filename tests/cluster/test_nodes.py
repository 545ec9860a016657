"""Heartbeats: every node listed with its figures; a node killed with -9 drops out after the timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from redis_nodes import Node, RedisServer
from servers import ROOT

pytestmark = pytest.mark.asyncio

# A node in its own process, beating until killed.
NODE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from coremq_broker.cluster import ClusterSettings, RedisEngine

    async def main():
        settings = ClusterSettings(redis_url=sys.argv[1], key_prefix="test:", node_name="doomed",
                                   heartbeat_interval=0.2, node_timeout=2.0)
        engine = RedisEngine(settings, address="127.0.0.1:1", figures=lambda: {"connections": 7})
        await engine.start()
        print("beating", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


async def test_nodes_listed_with_their_figures(redis_server: RedisServer) -> None:
    """Each node's heartbeat carries name, address, uptime and the broker's figures; a clean stop leaves at once."""
    figures = {"connections": 3, "queues": 2, "rate_in": 1.5, "rate_out": 4.0, "rss_bytes": 123456}
    a = Node(redis_server, "a")
    a.engine.heartbeat.figures = lambda: figures
    b = Node(redis_server, "b")
    await a.engine.start()
    await b.engine.start()
    try:
        await a.wait_for(lambda: a.engine.heartbeat.beats >= 2 and b.engine.heartbeat.beats >= 2)
        listed = await b.engine.nodes()
        assert [node["name"] for node in listed] == ["a", "b"]
        node_a = listed[0]
        assert {key: node_a[key] for key in figures} == figures
        assert node_a["address"] == "a" and node_a["uptime"] >= 0 and node_a["started"] <= node_a["sent"]
        ttl = redis_server.client().pttl("test:node:a")
        assert 0 < ttl <= 1000
    finally:
        await a.engine.close()
    assert [node["name"] for node in await b.engine.nodes()] == ["b"]
    await b.engine.close()


async def test_killed_node_drops_out_after_timeout(redis_server: RedisServer) -> None:
    """A node killed with SIGKILL stays listed until its heartbeat expires (node_timeout), then is gone."""
    watcher = Node(redis_server, "watcher")
    await watcher.engine.start()
    process = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, redis_server.url], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "beating"
        listed = {node["name"]: node for node in await watcher.engine.nodes()}
        assert listed["doomed"]["connections"] == 7 and listed["doomed"]["address"] == "127.0.0.1:1"
        process.send_signal(signal.SIGKILL)
        process.wait()
        seen_after_kill = "doomed" in {node["name"] for node in await watcher.engine.nodes()}
        for _ in range(100):
            names = {node["name"] for node in await watcher.engine.nodes()}
            if "doomed" not in names:
                break
            await asyncio.sleep(0.05)
        assert "doomed" not in names and "watcher" in names
        assert seen_after_kill  # it did not leave by itself: the timeout took it out
        assert redis_server.client().zscore("test:nodes", "doomed") is None
    finally:
        if process.poll() is None:
            process.kill()
        await watcher.engine.close()


async def test_heartbeat_survives_redis_restart(redis_server: RedisServer) -> None:
    """Heartbeats that fail while Redis is down are counted; the node is listed again once Redis is back."""
    a = Node(redis_server, "a")
    await a.engine.start()
    try:
        redis_server.kill()
        await a.wait_for(lambda: a.engine.heartbeat.failures >= 1)
        redis_server.start()
        await a.wait_for(lambda: redis_server.client().exists("test:node:a") == 1)
        assert [node["name"] for node in await a.engine.nodes()] == ["a"]
    finally:
        await a.engine.close()
