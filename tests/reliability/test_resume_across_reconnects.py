"""Resuming without loss: both clients across cut connections and broker restarts, over real sockets.

Each scenario runs on both clients through ``tests/clients.py``; the broker
runs in a thread (``conftest.BrokerThread``).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from clients import PATIENCE, BrokerThread, client_factory  # noqa: F401  (a fixture)
from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig
from coremq_client import Delivery, FrameTooLarge
from coremq_client.protocol import Gap

pytestmark = pytest.mark.timeout(120)

TOTAL = 10_000
#: Cut the subscriber when it has received this many (even: on the broker's side, odd: on its own).
CUTS = (1_000, 2_500, 4_000, 6_500, 8_000)
#: The broker restarts once this many are published, and publishes MISSED_AT_RESTART
#: more itself before it accepts any connection: the subscriber must fetch them.
RESTART_AT = 5_000
MISSED_AT_RESTART = 500


@pytest.fixture
def run_broker() -> Iterator[Callable[[BrokerConfig], BrokerThread]]:
    """Start brokers with a given configuration; all are stopped afterwards."""
    started: list[BrokerThread] = []

    def start(config: BrokerConfig) -> BrokerThread:
        started.append(BrokerThread(config))
        return started[-1]

    yield start
    for broker in started:
        broker.stop()


def restart_and_publish(broker: BrokerThread, queue: str, numbers: range) -> None:
    """Restart the broker and publish ``{"n": n}`` for ``numbers`` before it accepts any connection."""
    port = broker.port
    broker.close()
    fresh = Broker(broker.config.with_options(port=port), **broker.broker_options)

    async def start() -> None:
        await fresh.start()  # listening, but nothing is accepted until this coroutine returns
        for n in numbers:
            fresh.deliver(fresh.registry.queue(queue), {"n": n})

    asyncio.run_coroutine_threadsafe(start(), broker.loop).result(10)
    broker.broker = fresh


def cut_and_publish(broker: BrokerThread, connection_id: str, queue: str, numbers: range) -> None:
    """On the broker's loop, in one step: drop a connection, then publish while it cannot be back."""
    def act() -> None:
        broker.broker.registry.connections[connection_id].abort()
        for n in numbers:
            broker.broker.deliver(broker.broker.registry.queue(queue), {"n": n})

    broker.call(act)


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a guard against hanging, not a timing assertion)."""
    pause = threading.Event()
    for _ in range(int(PATIENCE / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError("the condition never became true")


def receive(client: Any, count: int) -> list[Delivery]:
    deliveries = [client.receive(PATIENCE) for _ in range(count)]
    assert None not in deliveries
    return deliveries


def reconnected(client: Any, old_id: str | None) -> None:
    """Wait for a new connection, then for its replayed requests to be answered."""
    wait_until(lambda: client.connected and client.connection_id != old_id)
    client.status()


# -- the stream survives cuts and a restart ------------------------------------------

def test_every_message_once_and_in_order_across_cuts_and_a_restart(client_factory, run_broker, tmp_path: Path):
    """10,000 durable messages reach a subscriber exactly once and in order though it is cut 5 times and the broker restarts."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0, durable_all=True, history_length=TOTAL,
                                     durable_path=str(tmp_path / "history.sqlite3")))
    make = client_factory(broker)
    gaps: list[Gap] = []
    # Thousands of messages are fetched after each cut: in pages (RESUME_PAGE), on the default frame limit.
    sub = make(queues=["stream"], on_gap=gaps.append)
    pub = make()
    received: list[Delivery] = []
    halfway, restarted = threading.Event(), threading.Event()

    def consume() -> None:
        while len(received) < TOTAL:
            received.extend(receive(sub, 1))

    def publish() -> None:
        for n in [*range(RESTART_AT), *range(RESTART_AT + MISSED_AT_RESTART, TOTAL)]:
            if n == RESTART_AT + MISSED_AT_RESTART:
                halfway.set()
                assert restarted.wait(PATIENCE)
            # Replies off for speed; every 100th waits: a durable OK means all before it are on disk.
            pub.publish("stream", {"n": n}, reply=n % 100 == 99)

    consumer = threading.Thread(target=consume, daemon=True)
    publisher = threading.Thread(target=publish, daemon=True)
    consumer.start()
    publisher.start()
    for number, at in enumerate(CUTS):
        if at > RESTART_AT and not restarted.is_set():
            assert halfway.wait(PATIENCE)
            old = pub.connection_id
            restart_and_publish(broker, "stream", range(RESTART_AT, RESTART_AT + MISSED_AT_RESTART))
            reconnected(pub, old)
            restarted.set()
        wait_until(lambda: len(received) >= at or not consumer.is_alive())
        if number % 2:
            sub.cut()
        else:
            broker.call(lambda: broker.broker.registry.connections[sub.connection_id].abort())
    publisher.join(PATIENCE)
    consumer.join(PATIENCE)
    assert not consumer.is_alive() and not publisher.is_alive()
    assert [d.id for d in received] == list(range(1, TOTAL + 1))
    assert [d.message["n"] for d in received] == list(range(TOTAL))
    assert all(d.gap is None for d in received) and gaps == [] and sub.gaps == []


# -- what cannot be delivered is reported ---------------------------------------------

def test_gap_larger_than_history_is_reported(client_factory, run_broker):
    """Messages that left a short history while the subscriber was away are one Gap; the rest come in order."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0, history_length=5))
    make = client_factory(broker)
    gaps: list[Gap] = []
    sub = make(queues=["q"], on_gap=gaps.append)
    pub = make()
    for n in range(3):
        pub.publish("q", {"n": n})
    assert [d.id for d in receive(sub, 3)] == [1, 2, 3]
    cut_and_publish(broker, sub.connection_id, "q", range(3, 23))  # ids 4..23; history keeps 19..23
    resumed = receive(sub, 5)
    assert [d.id for d in resumed] == [19, 20, 21, 22, 23]
    assert [d.message["n"] for d in resumed] == [18, 19, 20, 21, 22]
    assert resumed[0].gap == Gap("q", 4, 18) and all(d.gap is None for d in resumed[1:])
    assert gaps == [Gap("q", 4, 18)] and sub.gaps == gaps
    pub.publish("q", {"n": 23})
    live = receive(sub, 1)[0]
    assert live.id == 24 and live.gap is None


@pytest.mark.parametrize("published, expected_ids, expected_gap", [
    (range(0), [], Gap("q", None, None, reset=True)),
    (range(2), [1, 2], Gap("q", None, None, reset=True)),  # the sequence went backwards: last 2 < 5
    (range(8), [4, 5, 6, 7, 8], Gap("q", 1, 3, reset=True)),  # already past 5: told by message 5's stamp
])
def test_restart_of_a_broker_without_durable_history_is_reported(client_factory, run_broker, published,
                                                                 expected_ids, expected_gap):
    """A restart that renumbers a queue is reported as a reset, and the new numbering is delivered, not dropped."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0, history_length=5))
    make = client_factory(broker)
    gaps: list[Gap] = []
    sub = make(queues=["q"], on_gap=gaps.append)
    pub = make()
    for n in range(5):
        pub.publish("q", {"n": n})
    assert [d.id for d in receive(sub, 5)] == [1, 2, 3, 4, 5]
    old_sub, old_pub = sub.connection_id, pub.connection_id
    restart_and_publish(broker, "q", published)
    reconnected(pub, old_pub)
    reconnected(sub, old_sub)
    wait_until(lambda: gaps != [])
    resumed = receive(sub, len(expected_ids))
    assert [d.id for d in resumed] == expected_ids
    assert [d.message["n"] for d in resumed] == [i - 1 for i in expected_ids]
    pub.publish("q", {"n": "after"})
    resumed += receive(sub, 1)
    assert resumed[-1].id == len(published) + 1 and resumed[-1].message["n"] == "after"
    assert gaps == [expected_gap] and resumed[0].gap == expected_gap
    assert all(d.gap is None for d in resumed[1:])


def test_history_reply_over_the_frame_limit_is_a_reported_gap(client_factory, run_broker):
    """A history reply too large for the client's frame limit cannot resume: the loss is reported, not hidden."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0, history_length=100))
    make = client_factory(broker)
    gaps: list[Gap] = []
    sub = make(queues=["q"], max_frame_size=4096, on_gap=gaps.append)
    pub = make()
    pub.publish("q", {"n": 0})
    assert [d.id for d in receive(sub, 1)] == [1]
    old = sub.connection_id
    cut_and_publish(broker, sub.connection_id, "q", range(1, 51))  # ~10 KB of history to fetch
    reconnected(sub, old)
    pub.publish("q", {"n": 51})
    live = receive(sub, 1)[0]
    assert live.id == 52 and live.gap == Gap("q", 2, 51)
    assert gaps == [Gap("q", 2, 51)]
    assert any(isinstance(error, FrameTooLarge) for error in sub.errors)


def test_a_history_longer_than_the_frame_limit_is_fetched_in_pages(client_factory, run_broker):
    """2,000 missed messages (~450 KB) reach a client whose frame limit is 64 KiB: pages, in order, no gap."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0, history_length=5000))
    make = client_factory(broker)
    gaps: list[Gap] = []
    sub = make(queues=["q"], max_frame_size=2**16, on_gap=gaps.append)
    pub = make()
    pub.publish("q", {"n": 0})
    assert [d.id for d in receive(sub, 1)] == [1]
    old = sub.connection_id
    cut_and_publish(broker, sub.connection_id, "q", range(1, 2001))
    reconnected(sub, old)
    pub.publish("q", {"n": 2001})  # live while the pages come: held, then delivered after them
    resumed = receive(sub, 2001)
    assert [d.id for d in resumed] == list(range(2, 2003))
    assert [d.message["n"] for d in resumed] == list(range(1, 2002))
    assert gaps == [] and sub.errors == [] and all(d.gap is None for d in resumed)


def test_resume_off_delivers_only_live_messages(client_factory, run_broker):
    """With resume=False nothing missed is fetched and nothing is reported (the 2015 behaviour)."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0))
    make = client_factory(broker)
    sub = make(queues=["q"], resume=False)
    pub = make()
    pub.publish("q", {"n": 0})
    receive(sub, 1)
    old = sub.connection_id
    cut_and_publish(broker, sub.connection_id, "q", range(1, 4))
    reconnected(sub, old)
    pub.publish("q", {"n": 4})
    assert [d.id for d in receive(sub, 1)] == [5]
    assert sub.gaps == [] and sub.last_ids == {"q": 5}


def test_own_publishes_are_not_resumed_without_echo(client_factory, run_broker):
    """A client's own publishes found in history are not delivered to it unless echo is on."""
    broker = run_broker(BrokerConfig(port=0, shutdown_timeout=2.0))
    make = client_factory(broker)
    sub = make(queues=["q"])
    pub = make()
    pub.publish("q", {"n": 0})
    receive(sub, 1)
    sub.publish("q", {"n": "own"})
    old = sub.connection_id
    cut_and_publish(broker, sub.connection_id, "q", range(2, 4))
    reconnected(sub, old)
    assert [d.message["n"] for d in receive(sub, 2)] == [2, 3]
    assert sub.gaps == []
