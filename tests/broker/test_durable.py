"""Durable history survives kill -9 and restarts; queues that are not durable never wait for the disk."""

from __future__ import annotations

import os
import signal


from coremq_broker import start
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.registry import QueueSettings
from brokers import BrokerThread
from wire import RawClient


def test_acknowledged_messages_survive_kill_9(tmp_path):
    """Every publish acknowledged before kill -9 is in the history after a restart, and numbering goes on."""
    path = str(tmp_path / "history.sqlite3")
    broker = start(port=0, durable_all=True, durable_path=path, history_length=100)
    client = RawClient(broker.host, broker.port)
    for n in range(60):
        client.send("orders", {"n": n})
        reply = client.read()[1]
        assert reply["response"] == "OK: Message sent" and reply["id"] == n + 1
    os.kill(broker.pid, signal.SIGKILL)
    broker.join(10)
    client.close()
    restarted = start(port=0, durable_all=True, durable_path=path, history_length=100)
    try:
        client = RawClient(restarted.host, restarted.port)
        reply = client.control({"coremq_gethistory": ["orders"]})
        assert [m["n"] for m in reply["history"]["orders"]] == list(range(60))
        assert reply["sequence"]["orders"] == {"first": 1, "last": 60, "continued": True}
        client.send("orders", {"n": 60})
        assert client.read()[1]["id"] == 61
        client.close()
    finally:
        restarted.stop()


def test_history_length_is_kept_on_disk_too(tmp_path):
    """After many durable publishes and a restart, the history holds the last history_length messages."""
    path = str(tmp_path / "history.sqlite3")
    config = BrokerConfig(port=0, durable_all=True, durable_path=path, history_length=5)
    running = BrokerThread(config)
    client = RawClient(running.host, running.port)
    client.control({"coremq_options": {"reply": False}})
    for n in range(500):
        client.send("ticks", {"n": n})
    assert client.control({"coremq_status": True})["response"] == "OK: Status"
    client.close()
    running.stop()
    again = BrokerThread(config)
    try:
        client = RawClient(again.host, again.port)
        reply = client.control({"coremq_gethistory": ["ticks"]})
        assert [m["n"] for m in reply["history"]["ticks"]] == [495, 496, 497, 498, 499]
        client.close()
    finally:
        again.stop()


def test_durable_per_queue_and_delivery_after_commit(tmp_path):
    """Only queues whose settings say durable are written; subscribers of both kinds get every message in order."""
    path = str(tmp_path / "history.sqlite3")

    def settings(name: str) -> QueueSettings:
        return QueueSettings(10, durable=name.startswith("d."))

    running = BrokerThread(BrokerConfig(port=0, durable_path=path), queue_settings=settings)
    try:
        sub = RawClient(running.host, running.port)
        sub.control({"coremq_subscribe": ["d.orders", "plain"]})
        pub = RawClient(running.host, running.port)
        for n in range(20):
            pub.send("d.orders", {"n": n})
            pub.send("plain", {"n": n})
        replies = [pub.read()[1] for _ in range(40)]
        assert sorted(r["request"] for r in replies) == list(range(1, 41))
        got: dict[str, list[int]] = {"d.orders": [], "plain": []}
        for _ in range(40):
            queue, message = sub.read()
            got[queue].append(message["n"])
        assert got == {"d.orders": list(range(20)), "plain": list(range(20))}
        pub.close()
        sub.close()
    finally:
        running.stop()
    from coremq_broker.core.durable import HistoryStore

    saved = HistoryStore(path).load()
    assert list(saved) == ["d.orders"] and len(saved["d.orders"]) == 20


def test_purge_clears_durable_history(tmp_path):
    """Purging a durable queue empties its history on disk as well: a restart does not bring it back."""
    path = str(tmp_path / "history.sqlite3")
    config = BrokerConfig(port=0, durable_all=True, durable_path=path)
    running = BrokerThread(config)
    client = RawClient(running.host, running.port)
    for n in range(3):
        client.send("gone", {"n": n})
        client.read()
    assert client.control({"coremq_admin": {"action": "purge", "queue": "gone"}})["purged"] == 3
    client.send("gone", {"n": 3})
    client.read()
    client.close()
    running.stop()
    again = BrokerThread(config)
    try:
        client = RawClient(again.host, again.port)
        reply = client.control({"coremq_gethistory": ["gone"]})
        assert [m["n"] for m in reply["history"]["gone"]] == [3]
        client.close()
    finally:
        again.stop()
