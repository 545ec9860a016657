"""A subscriber that never reads cannot make the broker grow: 200 MB pass with its RSS bounded."""

from __future__ import annotations

import threading

import psutil
import pytest

from coremq_broker import start
from wire import RawClient

MB = 2**20


@pytest.mark.parametrize("policy", ["drop", "disconnect"])
def test_200_mb_past_a_sleeping_subscriber(policy):
    """With 200 MB published to a queue whose other subscriber never reads, broker RSS grows by under 64 MB
    (bound: 2 x max_write_buffer (8 MiB) + socket buffers, stated in docs/reliability.md) and the reading
    subscriber gets every message in order."""
    broker = start(port=0, slow_consumer_policy=policy)
    try:
        process = psutil.Process(broker.pid)
        sleeper = RawClient(broker.host, broker.port)
        sleeper.control({"coremq_subscribe": ["big"]})
        reader = RawClient(broker.host, broker.port, timeout=30)
        reader.control({"coremq_subscribe": ["big"]})
        publisher = RawClient(broker.host, broker.port, timeout=30)
        publisher.control({"coremq_options": {"reply": False}})
        baseline = process.memory_info().rss
        count = 20_000
        payload = "x" * (10 * 1024)  # 20,000 x 10 KiB = 200 MB
        received: list[int] = []

        def read_all() -> None:
            while len(received) < count:
                queue, message = reader.read()
                received.append(message["n"])

        thread = threading.Thread(target=read_all, daemon=True)
        thread.start()
        peak = baseline
        for n in range(count):
            while n - len(received) > 200:  # the reader keeps up; only the sleeper falls behind
                thread.join(0.001)
            publisher.send("big", {"n": n, "p": payload})
            if n % 500 == 0:
                peak = max(peak, process.memory_info().rss)
        thread.join(120)
        peak = max(peak, process.memory_info().rss)
        assert received == list(range(count))
        assert peak - baseline < 64 * MB, f"RSS grew by {(peak - baseline) / MB:.1f} MB"
        status = publisher.control({"coremq_status": True})
        assert status["slow_consumers"] >= 1
    finally:
        broker.stop()
