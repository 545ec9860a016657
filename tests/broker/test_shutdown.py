"""Graceful shutdown as a contract: SIGTERM says BYE, persists, exits 0, and clients come back by themselves."""

from __future__ import annotations

import time

from coremq_broker import start
from coremq_client import MessageQueue


def test_sigterm_then_restart_clients_reconnect_and_history_persists(tmp_path):
    """After SIGTERM the broker exits 0; a restarted broker on the same port gets the clients back, resubscribed,
    and durable history acknowledged before the shutdown is still there."""
    path = str(tmp_path / "history.sqlite3")
    broker = start(port=0, durable_all=True, durable_path=path)
    port = broker.port
    subscriber = MessageQueue(broker.host, port, queues=["events"], backoff=0.05, max_backoff=0.2, timeout=10)
    publisher = MessageQueue(broker.host, port, backoff=0.05, max_backoff=0.2, timeout=10)
    try:
        subscriber.connect()
        publisher.connect()
        assert publisher.send_message("events", {"n": 1})["response"] == "OK: Message sent"
        assert subscriber.get_message(timeout=5)[1]["n"] == 1
        first_id = subscriber.connection_id
        assert broker.stop(timeout=10) == 0
        broker = start(port=port, durable_all=True, durable_path=path)
        deadline = time.monotonic() + 10
        while subscriber.connection_id in (None, first_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert subscriber.connection_id not in (None, first_id)
        assert publisher.send_message("events", {"n": 2})["response"] == "OK: Message sent"
        messages = []
        while len(messages) < 1:
            queue, message = subscriber.get_message(timeout=5)
            assert queue == "events"
            messages.append(message["n"])
        assert messages == [2]
        history = publisher.get_history("events")["events"]
        assert [m["n"] for m in history] == [1, 2]
    finally:
        subscriber.close()
        publisher.close()
        broker.stop()
