"""A slow application on both Python clients, over real sockets to a real broker.

``max_pending`` bounds what a client keeps for the application; past it the
reader stops reading, TCP pushes back and the broker's slow-consumer policy
decides. Under ``drop`` the broker says which ids it dropped and the client
fetches them from history: every message once and in order, or a
:class:`Gap` naming exactly what history no longer holds.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterator

import pytest

from clients import PATIENCE, BrokerThread, client_factory  # noqa: F401  (a fixture)
from coremq_broker.core.config import BrokerConfig
from coremq_client import AsyncMessageQueue, ConnectionClosed, CoreMQError, Delivery, Gap, MessageQueue, SlowConsumer
from coremq_client.resume import RESUME_PAGE
from wire import RawClient

pytestmark = pytest.mark.timeout(120)

QUEUE = "firehose"
#: 3,000 x 8 KB = 24 MB: far more than the broker's buffer for one connection
#: (2 x MAX_WRITE_BUFFER below) and the kernel's socket buffers hold.
COUNT = 3_000
PAYLOAD = "x" * 8_000
MAX_WRITE_BUFFER = 64 * 1024
#: What one read of the socket adds past max_pending: 64 KiB of messages, or one history page.
ONE_READ = max(2**16 // len(PAYLOAD) + 1, RESUME_PAGE)


@pytest.fixture
def run_broker() -> Iterator[Callable[..., BrokerThread]]:
    """``run_broker(**options)``: a broker with a small MAX_WRITE_BUFFER and these options; stopped afterwards."""
    started: list[BrokerThread] = []

    def start(**options: Any) -> BrokerThread:
        config = BrokerConfig(port=0, shutdown_timeout=2.0, max_write_buffer=MAX_WRITE_BUFFER, **options)
        started.append(BrokerThread(config))
        return started[-1]

    yield start
    for broker in started:
        broker.stop()


def publish_all(broker: BrokerThread) -> None:
    """Publish COUNT messages ``{"n": 0..}`` to QUEUE at full speed; return once the broker handled them all."""
    publisher = RawClient(broker.host, broker.port, timeout=PATIENCE)
    try:
        publisher.control({"coremq_options": {"reply": False}})
        for n in range(COUNT):
            publisher.send(QUEUE, {"n": n, "p": PAYLOAD})
        publisher.control({"coremq_status": True})
    finally:
        publisher.sock.close()


def dropped_by_broker(broker: BrokerThread, client: Any) -> int:
    """How many deliveries the broker dropped for ``client``'s connection."""
    return broker.call(lambda: broker.broker.registry.connections[client.connection_id].dropped)


def receive_until(client: Any, last_id: int, *, pause: float = 0.0, seen: list[int] | None = None
                  ) -> list[Delivery]:
    """Receive until the delivery with id ``last_id`` (sleeping ``pause`` after each); ``seen`` gets ``pending``."""
    received: list[Delivery] = []
    while not received or received[-1].id < last_id:
        delivery = client.receive(PATIENCE)
        assert delivery is not None, f"nothing after id {received[-1].id if received else None}"
        received.append(delivery)
        if seen is not None:
            seen.append(client.pending)
        if pause:
            time.sleep(pause)
    return received


def spans(errors: list[CoreMQError]) -> list[tuple[int, int]]:
    """The ``(first, last)`` ids the broker said it dropped, from the SlowConsumer errors reported."""
    found = []
    for error in errors:
        if isinstance(error, SlowConsumer):
            first, last = error.dropped[QUEUE]
            assert first is not None and last is not None
            found.append((first, last))
    return found


def ids_in(ranges: list[tuple[int, int]]) -> set[int]:
    return {number for first, last in ranges for number in range(first, last + 1)}


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a guard against hanging, not a timing assertion)."""
    pause = threading.Event()
    for _ in range(int(PATIENCE / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError("the condition never became true")


def test_dropped_messages_are_fetched_from_history(client_factory, run_broker):
    """Under drop with a long history, a client that stopped reading gets every message once, in order, no gap."""
    broker = run_broker(slow_consumer_policy="drop", history_length=COUNT)
    errors: list[CoreMQError] = []
    gaps: list[Gap] = []
    sub = client_factory(broker)(queues=[QUEUE], max_pending=50, on_error=errors.append, on_gap=gaps.append)
    publish_all(broker)  # the application receives nothing meanwhile
    dropped = dropped_by_broker(broker, sub)
    assert dropped > 0  # the scenario: the broker did drop
    received = receive_until(sub, COUNT)
    assert [d.id for d in received] == list(range(1, COUNT + 1))
    assert [d.message["n"] for d in received] == list(range(COUNT))
    assert gaps == [] and sub.gaps == [] and all(d.gap is None for d in received)
    wait_until(lambda: len(ids_in(spans(errors))) == dropped)  # told which, and reported as SlowConsumer
    assert sub.receive(0.2) is None  # and nothing twice


def test_dropped_messages_gone_from_history_are_an_exact_gap(client_factory, run_broker):
    """Under drop with a short history, the ids neither delivered nor in history are reported as Gaps, exactly."""
    history = 100
    broker = run_broker(slow_consumer_policy="drop", history_length=history)
    errors: list[CoreMQError] = []
    gaps: list[Gap] = []
    sub = client_factory(broker)(queues=[QUEUE], max_pending=50, on_error=errors.append, on_gap=gaps.append)
    publish_all(broker)
    assert dropped_by_broker(broker, sub) > 0
    received = receive_until(sub, COUNT)
    delivered = [d.id for d in received]
    assert delivered == sorted(set(delivered))  # in order, once each
    lost = [(gap.first_missing, gap.last_missing) for gap in gaps]
    assert gaps and all(not gap.reset for gap in gaps)
    assert ids_in(lost) == set(range(1, COUNT + 1)) - set(delivered)  # every missing id, and only those
    assert sum(gap.count for gap in gaps) == COUNT - len(delivered)  # no id reported twice
    assert max(ids_in(lost)) <= COUNT - history  # nothing still in history is reported lost
    # Each delivery after lost ids is marked with them: its gap lies between it and the one before.
    marked = [(d.gap.first_missing, d.gap.last_missing) for d in received if d.gap is not None]
    assert ids_in(marked) == ids_in(lost)
    for before, delivery in zip([0, *delivered], received):
        if delivery.gap is not None:
            assert before < delivery.gap.first_missing <= delivery.gap.last_missing < delivery.id
    assert sub.gaps == gaps[-len(sub.gaps):]


def test_without_resume_the_dropped_ids_are_the_gap(client_factory, run_broker):
    """With resume=False nothing is fetched: exactly the ids the broker dropped are reported as Gaps."""
    broker = run_broker(slow_consumer_policy="drop", history_length=COUNT)
    errors: list[CoreMQError] = []
    gaps: list[Gap] = []
    sub = client_factory(broker)(queues=[QUEUE], max_pending=50, resume=False, on_error=errors.append,
                                 on_gap=gaps.append)
    publish_all(broker)
    dropped = dropped_by_broker(broker, sub)
    assert dropped > 0
    received: list[int] = []

    def all_accounted_for() -> bool:  # the last ones may be dropped too
        delivery = sub.receive(0)
        if delivery is not None:
            received.append(delivery.id)
        return len(received) + len(ids_in(spans(errors))) >= COUNT

    wait_until(all_accounted_for)
    assert len(ids_in(spans(errors))) == dropped
    lost = [(gap.first_missing, gap.last_missing) for gap in gaps]
    assert lost == spans(errors)
    assert sorted(received + sorted(ids_in(lost))) == list(range(1, COUNT + 1))
    assert received == sorted(received) and sub.receive(0.2) is None


def test_a_stalled_application_is_a_slow_consumer_to_the_broker(client_factory, run_broker):
    """Past max_pending the client stops reading: the broker sees a slow consumer and disconnects it; the client
    reconnects and resumes, and the application gets every message once, in order, no gap."""
    broker = run_broker(slow_consumer_policy="disconnect", history_length=COUNT)
    gaps: list[Gap] = []
    sub = client_factory(broker)(queues=[QUEUE], max_pending=50, on_gap=gaps.append)
    first_connection = sub.connection_id
    publish_all(broker)  # the application receives nothing meanwhile
    assert broker.call(lambda: broker.broker.registry.slow_consumers) >= 1
    received = receive_until(sub, COUNT)
    assert sub.connection_id != first_connection  # it was cut off and came back
    assert [d.id for d in received] == list(range(1, COUNT + 1))
    assert gaps == [] and all(d.gap is None for d in received)


@pytest.mark.parametrize("policy", ["drop", "disconnect"])
def test_a_slow_application_is_bounded_by_max_pending(client_factory, run_broker, policy):
    """A slow application (1 ms a message) keeps at most max_pending (+ one read) messages in the client, and with
    a long history still gets every message once, in order, whatever the broker's policy does meanwhile."""
    max_pending = 200
    broker = run_broker(slow_consumer_policy=policy, history_length=COUNT)
    gaps: list[Gap] = []
    sub = client_factory(broker)(queues=[QUEUE], max_pending=max_pending, on_gap=gaps.append)
    pending: list[int] = []
    received: list[Delivery] = []
    application = threading.Thread(
        target=lambda: received.extend(receive_until(sub, COUNT, pause=0.001, seen=pending)), daemon=True)
    application.start()
    publish_all(broker)  # much faster than 1 ms per message
    application.join(PATIENCE)
    assert not application.is_alive()
    assert max(pending) <= max_pending + ONE_READ
    assert [d.id for d in received] == list(range(1, COUNT + 1))
    assert gaps == [] and all(d.gap is None for d in received)


def test_max_pending_is_checked():
    """max_pending must be a positive int or None."""
    for kind in (MessageQueue, AsyncMessageQueue):
        for bad in (0, -1, 1.5, True):
            with pytest.raises(ValueError):
                kind(max_pending=bad)


def test_close_ends_a_client_that_waits_for_room(client_factory, run_broker):
    """close() ends a client whose reader waits for the application; what it held can still be received."""
    broker = run_broker()
    sub = client_factory(broker)(queues=[QUEUE], max_pending=5)
    publisher = RawClient(broker.host, broker.port, timeout=PATIENCE)
    publisher.control({"coremq_options": {"reply": False}})
    for n in range(50):
        publisher.send(QUEUE, {"n": n})
    publisher.control({"coremq_status": True})
    wait_until(lambda: sub.pending >= 5)
    if isinstance(sub.client, MessageQueue):
        sub.client.close()
    else:  # the wrapper's own close() would stop its event loop too
        sub._run(sub.client.close())
    assert sub.closed and not sub.connected
    received = []
    with pytest.raises(ConnectionClosed):
        while True:
            delivery = sub.receive(PATIENCE)
            assert delivery is not None
            received.append(delivery.message["n"])
    assert received == list(range(len(received))) and len(received) >= 5
    publisher.sock.close()
