"""Graceful shutdown as a contract: SIGTERM answers what was read, says BYE without a reset, persists, exits 0,
and clients come back by themselves."""

from __future__ import annotations

import os
import signal
import sys
import time

from coremq_broker import start
from coremq_client import MessageQueue
from flowload import Worker, publisher, subscriber
from servers import ServerProcess
from wire import RawClient


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


def test_sigterm_answers_a_pipelining_publisher_in_full_and_never_resets(tmp_path):
    """SIGTERM on run_coremq while a publisher pipelines at full speed (requests written but not yet read): it
    receives an ack for every publish the broker carried out, then BYE, then a clean end of stream (no reset);
    a subscriber receives exactly the acknowledged messages, then BYE; the process exits 0."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
           "COREMQ_DATABASE": str(tmp_path / "db.sqlite3"), "PYTHONUNBUFFERED": "1"}
    server = ServerProcess([sys.executable, "manage.py", "run_coremq", "--no-web", "--port", "0"], env)
    reader = writer = None
    try:
        line = server.wait_for("CoreMQ broker listening on")
        port = int(line.split()[-2].rsplit(":", 1)[1])
        reader = Worker(subscriber, "127.0.0.1", port, "stream", 10**9, 60)
        reader.wait_ready()
        writer = Worker(publisher, "127.0.0.1", port, "stream", 10**9, 60)
        writer.wait_ready()
        probe = RawClient("127.0.0.1", port)
        while not probe.control({"coremq_status": True})["messages_out"] > 20_000:  # well under way
            time.sleep(0.05)
        probe.close()
        server.process.send_signal(signal.SIGTERM)
        published = writer.join(60)
        received = reader.join(60)
        assert server.process.wait(timeout=30) == 0
    finally:
        for worker in (reader, writer):
            if worker is not None:
                worker.kill()
        server.stop()
    assert published["closed"] == "EOF", published  # not "ConnectionResetError: ..."
    assert published["error"] == f"connection ended after {published['acks']} acks: EOF", published
    assert published["other"] == [{"response": "BYE"}] and published["acks_before_bye"] == published["acks"]
    assert published["sent"] > published["acks"] > 0  # it was mid-stream: requests were still unread
    assert received["closed"] == "EOF" and received["other"] == [{"response": "BYE"}], received
    assert received["error"] == f"connection ended after {published['acks']} deliveries: EOF", received
