"""The registry as a plain object: queues, subscriptions, history ring, rates; no event loop."""

from __future__ import annotations

import json

from coremq_broker.core.registry import Connection, QueueSettings, RateCounter, Registry


class Recorder(Connection):
    def __init__(self, connection_id: str) -> None:
        super().__init__(connection_id)
        self.frames: list[bytes] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)


def test_add_and_remove_connection_cleans_up():
    """Removing a connection drops its subscriptions and its private queue."""
    registry = Registry(lambda name: QueueSettings(10))
    conn = Recorder("c1")
    registry.add(conn)
    registry.subscribe(conn, "news")
    assert registry.queues["c1"].owner == "c1"
    assert conn in registry.queues["news"].subscribers
    registry.remove(conn)
    assert "c1" not in registry.queues and not registry.queues["news"].subscribers
    assert registry.connections == {}


def test_history_ring_and_since():
    """History keeps the newest messages; since filters by id; shrinking keeps the newest.

    An entry is the message as sent and the stamps of its batch, spliced in
    before its closing brace (wire.stamped): history gives the stamped JSON.
    """
    registry = Registry(lambda name: QueueSettings(3))
    queue = registry.queue("q")
    for n in range(1, 6):
        queue.history.append((n, b'{"n": %d }' % n if n % 2 else b'{"n":%d}' % n, b',"coremq_id":'))
    messages = [json.loads(body) for body in queue.history_since(None)]
    assert messages == [{"n": n, "coremq_id": n} for n in (3, 4, 5)]
    assert [json.loads(body)["n"] for body in queue.history_since(4)] == [5]
    assert queue.first_id == 3
    queue.apply_settings(QueueSettings(2))
    assert [json.loads(body)["n"] for body in queue.history_since(None)] == [4, 5]


def test_rate_counter_over_a_window():
    """The rate averages whole seconds in the window and forgets older ones."""
    rate = RateCounter(window=5)
    for second in range(100, 104):
        rate.add(second + 0.5, 10)
    assert rate.series(104.2) == [10, 10, 10, 10]
    assert rate.rate(104.2) == 10.0
    assert rate.series(200.0) == [0, 0, 0, 0]


def test_describe_reports_memory_and_descriptors():
    """The broker description includes resident memory and open descriptors of this process."""
    description = Registry(lambda name: QueueSettings(1)).describe()
    assert description["rss_bytes"] > 1_000_000
    assert description["open_fds"] >= 3


def test_queue_rate_counts_publishes_with_and_without_subscribers(broker):
    """A queue's rate counts every publish, whether or not anyone subscribes."""
    from wire import RawClient

    listener = RawClient(broker.host, broker.port)
    listener.control({"coremq_subscribe": ["heard"]})
    client = RawClient(broker.host, broker.port)
    for name in ("heard", "unheard"):
        for n in range(5):
            client.send(name, {"n": n})
            client.read()
    later = __import__("time").time() + 1.5
    series = broker.call(lambda: {name: sum(broker.broker.registry.queues[name].rate.series(later))
                                  for name in ("heard", "unheard")})
    assert series == {"heard": 5, "unheard": 5}
