"""Proposed for tests/client (after the Resumer change): a resume over size-paged history replies loses nothing."""

from __future__ import annotations

import json
import time

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_client.codec import encode_frame
from coremq_client.sync_client import MessageQueue
from wire import RawClient


def test_a_resume_over_size_paged_history_loses_nothing():
    """After a reconnect a client resumes 50 queues whose missed history spans many size-limited pages, every message once."""
    limit = 16 * 2**10
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, history_length=20, max_frame_size=limit,
                                       shutdown_timeout=2.0))
    queues = [f"r{q:02d}" for q in range(50)]
    try:
        publisher = RawClient(broker.host, broker.port)
        with MessageQueue(broker.host, broker.port, queues=queues, max_frame_size=limit, backoff=0.05) as mq:
            for name in queues:
                publisher.send(name, {"n": 0})
                assert publisher.read()[1]["response"] == "OK: Message sent"
            got = {name: [] for name in queues}
            for _ in queues:
                d = mq.receive(timeout=5)
                got[d.queue].append(d.message["n"])
            # cut the client off, publish while it is away
            broker.call(lambda: [c.abort() for c in list(broker.broker.registry.connections.values())
                                 if c.id != publisher.id])
            for name in queues:
                publisher.send_raw(b"".join(encode_frame(name, json.dumps({"n": n, "pad": "p" * 500}).encode())
                                            for n in range(1, 20)))
                for _ in range(19):
                    publisher.read()
            deadline = time.monotonic() + 20
            gaps = []
            while time.monotonic() < deadline and sum(map(len, got.values())) < 50 * 20:
                d = mq.receive(timeout=1)
                if d is None:
                    continue
                if d.gap is not None:
                    gaps.append(d.gap)
                got[d.queue].append(d.message["n"])
            assert gaps == []
            assert got == {name: list(range(20)) for name in queues}
    finally:
        broker.stop()


def test_a_paged_resume_sends_its_requests_from_one_thread(monkeypatch):
    """The blocking client's follow-up history requests of a long resume come from one thread, not one each."""
    import threading

    started: list[str] = []
    start = threading.Thread.start

    def record(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", record)
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, history_length=500, shutdown_timeout=2.0))
    try:
        publisher = RawClient(broker.host, broker.port)
        with MessageQueue(broker.host, broker.port, queues=["paged"], backoff=0.05) as mq:
            publisher.send("paged", {"n": 0})
            publisher.read()
            assert mq.receive(timeout=5).message["n"] == 0
            broker.call(lambda: [c.abort() for c in list(broker.broker.registry.connections.values())
                                 if c.id != publisher.id])
            publisher.send_raw(b"".join(encode_frame("paged", json.dumps({"n": n}).encode()) for n in range(1, 450)))
            for _ in range(449):
                publisher.read()
            got = [mq.receive(timeout=10) for _ in range(449)]
            assert [d.message["n"] for d in got] == list(range(1, 450))  # five pages of RESUME_PAGE
            assert all(d.gap is None for d in got)
        assert len([name for name in started if name.startswith("coremq-resync")]) == 1
    finally:
        broker.stop()
