"""Flow control (issue 12): a subscriber that keeps reading is never cut off; publishers are slowed instead.

The broker runs as a real process (``coremq_broker.start``: uvloop, or plain
asyncio under ``COREMQ_PURE_PYTHON=1``); the publisher and the checking
subscribers run in processes of their own (``tests/flowload.py``) at full
speed; a stuck subscriber is a socket in this process that never reads.
"""

from __future__ import annotations

import threading
import time

import psutil
import pytest

from coremq_broker import start
from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.registry import Connection
from coremq_client.codec import encode_frame
from flowload import Worker, publisher, subscriber
from wire import RawClient

MB = 2**20
TIMEOUT = BrokerConfig().slow_consumer_timeout  # the default judgement, in seconds
#: Slack for a loaded 2-CPU machine on top of a documented bound, in seconds.
SLACK = 4.0


class RssWatch:
    """The broker process's peak RSS growth over its RSS when watching started, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def growth(self) -> float:
        """Stop watching; the peak growth in MB."""
        self._stop.set()
        self._thread.join(5)
        return (self.peak - self.baseline) / MB


def full_speed(count: int, subscribers: int, *, wait: float, **options) -> tuple[dict, list[dict], float]:
    """``count`` messages from one full-speed publisher to ``subscribers`` checking subscribers.

    Returns the publisher's result, the subscribers' results and the broker's RSS growth in MB.
    """
    with start(host="127.0.0.1", port=0, log_level="WARNING", **options) as broker:
        readers = [Worker(subscriber, broker.host, broker.port, "firehose", count, wait) for _ in range(subscribers)]
        for reader in readers:
            reader.wait_ready()
        rss = RssWatch(broker.pid)  # type: ignore[arg-type]
        writer = Worker(publisher, broker.host, broker.port, "firehose", count, wait)
        try:
            published = writer.join(wait + 10)
            results = [reader.join(wait + 10) for reader in readers]
        finally:
            for worker in (writer, *readers):
                worker.kill()
        return published, results, rss.growth()


def assert_all_delivered(published: dict, results: list[dict], count: int) -> None:
    assert published["error"] == "" and published["acks"] == count, published
    assert published["other"] == [], published["other"]
    for result in results:
        assert result["error"] == "" and result["received"] == count, result
        assert result["other"] == [] and result["closed"] == "", result


@pytest.mark.timeout(240)
def test_one_subscriber_gets_a_million_messages_from_a_full_speed_publisher():
    """1,000,000 messages at full speed into one subscriber reading in its own process: all delivered in order,
    nobody disconnected, every publish acknowledged, broker RSS growth under 64 MB."""
    count = 1_000_000
    published, results, growth = full_speed(count, 1, wait=180)
    assert_all_delivered(published, results, count)
    assert growth < 64, f"broker RSS grew by {growth:.1f} MB"


@pytest.mark.timeout(240)
def test_ten_subscribers_get_300000_messages_under_the_drop_policy():
    """300,000 messages at full speed to 10 subscribers, each in its own process, under the drop policy: all
    delivered in order to every one, none dropped or disconnected, broker RSS growth under 64 MB."""
    count = 300_000
    published, results, growth = full_speed(count, 10, wait=180, slow_consumer_policy="drop")
    assert_all_delivered(published, results, count)
    assert growth < 64, f"broker RSS grew by {growth:.1f} MB"


def stuck_subscriber(host: str, port: int, queue: str) -> RawClient:
    """A subscriber that stops reading at once (until the test reads what it was sent)."""
    client = RawClient(host, port, timeout=30)
    assert client.control({"coremq_subscribe": [queue]})["response"] == "OK: Subscribe successful"
    return client


def connection_ids(host: str, port: int) -> set[str]:
    probe = RawClient(host, port)
    try:
        status = probe.control({"coremq_status": {"connections": True}})
        return {connection["id"] for connection in status["connection_list"]}
    finally:
        probe.close()


@pytest.mark.timeout(120)
def test_a_stuck_subscriber_is_cut_within_the_timeout_and_the_others_get_everything():
    """A subscriber that stops reading beside a fast one: it is disconnected (ERROR: slow consumer) within
    SLOW_CONSUMER_TIMEOUT; the fast one gets all 200,000 messages in order; the publisher waits for no longer
    than the timeout at any one time."""
    count = 200_000
    with start(host="127.0.0.1", port=0, log_level="WARNING") as broker:
        stuck = stuck_subscriber(broker.host, broker.port, "firehose")
        fast = Worker(subscriber, broker.host, broker.port, "firehose", count, 90)
        fast.wait_ready()
        writer = Worker(publisher, broker.host, broker.port, "firehose", count, 90)
        try:
            started = time.monotonic()
            while stuck.id in connection_ids(broker.host, broker.port):
                assert time.monotonic() - started < TIMEOUT + SLACK, "the stuck subscriber was not cut"
                time.sleep(0.1)
            published = writer.join(100)
            result = fast.join(100)
        finally:
            writer.kill()
            fast.kill()
        assert_all_delivered(published, [result], count)
        assert published["max_gap"] < TIMEOUT + SLACK, published
        # What its socket held, then (if it had room) ERROR: slow consumer; the connection was closed or reset.
        stuck.sock.settimeout(10)
        frames = stuck.read_until_closed()
        ids = [message["coremq_id"] for queue, message in frames if queue == "firehose"]
        assert ids == list(range(1, len(ids) + 1)) and len(ids) < count
        assert [message for queue, message in frames if queue != "firehose"] in (
            [], [{"response": "ERROR: slow consumer", "code": "slow_consumer"}])


@pytest.mark.timeout(120)
def test_a_stuck_subscriber_under_drop_is_told_every_id_it_lost():
    """Under the drop policy a subscriber that stops reading is judged after SLOW_CONSUMER_TIMEOUT and stays
    connected; the publisher and a fast subscriber go on (all 200,000 in order, the publisher never waits longer
    than the timeout); when the stuck one reads again it gets every message or a notice naming it, in order."""
    count = 200_000
    with start(host="127.0.0.1", port=0, log_level="WARNING", slow_consumer_policy="drop") as broker:
        stuck = stuck_subscriber(broker.host, broker.port, "firehose")
        fast = Worker(subscriber, broker.host, broker.port, "firehose", count, 90)
        fast.wait_ready()
        writer = Worker(publisher, broker.host, broker.port, "firehose", count, 90)
        try:
            published = writer.join(100)
            result = fast.join(100)
        finally:
            writer.kill()
            fast.kill()
        assert_all_delivered(published, [result], count)
        assert published["max_gap"] < TIMEOUT + SLACK, published
        seen: list[int] = []
        notices = 0
        while not seen or seen[-1] < count:
            queue, message = stuck.read()
            if queue == stuck.id:
                assert message["response"] == "ERROR: slow consumer: messages dropped", message
                span = message["dropped"]["firehose"]
                assert span["first"] == len(seen) + 1, (span, len(seen))
                seen.extend(range(span["first"], span["last"] + 1))
                notices += 1
            else:
                assert message["coremq_id"] == len(seen) + 1
                seen.append(message["coremq_id"])
        assert seen == list(range(1, count + 1)) and notices >= 1
        assert stuck.id in connection_ids(broker.host, broker.port)
        assert stuck.control({"coremq_status": True})["slow_consumers"] == 1


@pytest.mark.timeout(120)
def test_a_publisher_of_another_queue_is_not_slowed_by_a_stuck_subscriber():
    """While a stuck subscriber of queue a holds a's publisher (a long judgement: 30 s), a publisher of queue b
    publishes and its subscriber receives at once; the stuck one stalls a only."""
    with start(host="127.0.0.1", port=0, log_level="WARNING", slow_consumer_timeout=30.0) as broker:
        stuck = stuck_subscriber(broker.host, broker.port, "a")
        writer = Worker(publisher, broker.host, broker.port, "a", 1_000_000, 60)
        other = RawClient(broker.host, broker.port, timeout=5)
        reader = RawClient(broker.host, broker.port, timeout=5)
        try:
            assert reader.control({"coremq_subscribe": ["b"]})["response"] == "OK: Subscribe successful"
            status = other.control({"coremq_status": True})
            a = -1
            while True:  # until a's publisher is held: the stuck one is congested, nothing more is published to a
                time.sleep(0.5)
                now = other.control({"coremq_status": {"queues": True, "connections": True}})
                congested = {c["id"]: c["buffered"] for c in now["connection_list"]}[stuck.id] > 64 * 1024
                published, a = a, {queue["name"]: queue for queue in now["queue_list"]}["a"]["published"]
                if congested and published == a:
                    break
            assert 0 < a < 1_000_000
            for n in range(200):  # each a request and reply, then a delivery, within the clients' 5 s timeout
                other.send("b", {"n": n})
                assert other.read()[1]["response"] == "OK: Message sent"
                assert reader.read()[1]["n"] == n
            final = other.control({"coremq_status": {"queues": True}})
            assert {queue["name"]: queue for queue in final["queue_list"]}["a"]["published"] == a
            assert status["slow_consumers"] == final["slow_consumers"] == 0
        finally:
            writer.kill()
            for client in (stuck, other, reader):
                client.close()


class RaisingDelivery(Connection):
    """A connection whose every delivery raises, as the bridge's re-encoding once did (issue 11)."""

    def send(self, data: bytes) -> None:
        raise RuntimeError("this delivery cannot be encoded")

    def close(self, reason: str | None = None) -> None:
        pass


class RaisingFlush(Connection):
    """A connection that buffers like a transport and whose flush raises."""

    def __init__(self, broker: Broker, connection_id: str) -> None:
        super().__init__(connection_id, peer="test")
        self.broker = broker
        self.out: list[bytes] = []

    def send(self, data: bytes) -> None:
        if not self.out:
            self.broker.schedule_flush(self)
        self.out.append(data)

    def flush(self) -> None:
        self.out.clear()
        raise RuntimeError("this flush fails")

    def close(self, reason: str | None = None) -> None:
        pass


def test_a_delivery_or_flush_that_raises_stops_no_other_output(broker):
    """Subscribers whose delivery or flush raises, registered in a real broker before and after a good one: the
    good subscriber gets every message, new clients their welcome, replies go on; each failure is counted."""
    registry = broker.broker.registry
    bad = [RaisingDelivery("bad-delivery"), RaisingFlush(broker.broker, "bad-flush")]

    def register(connections: list[Connection]) -> None:
        for connection in connections:
            registry.add(connection)
            registry.subscribe(connection, "news")

    broker.call(lambda: register(bad[:1]))
    good = RawClient(broker.host, broker.port)
    assert good.control({"coremq_subscribe": ["news"]})["response"] == "OK: Subscribe successful"
    broker.call(lambda: register(bad[1:]))
    publisher = RawClient(broker.host, broker.port)
    publisher.send_raw(b"".join(encode_frame("news", b'{"n":%d}' % n) for n in range(3)))  # one read, one run
    for n in range(3):
        assert publisher.read()[1]["response"] == "OK: Message sent"
        assert good.read()[1]["n"] == n
    for n in range(3, 6):  # one fan-out each
        publisher.send("news", {"n": n})
        assert publisher.read()[1]["response"] == "OK: Message sent"
        assert good.read()[1]["n"] == n
    late = RawClient(broker.host, broker.port)  # a welcome, after the failures
    status = late.control({"coremq_status": True})
    assert broker.call(lambda: bad[0].delivery_errors) >= 4 and broker.call(lambda: bad[1].delivery_errors) >= 4
    assert status["delivery_errors"] >= 8
    assert broker.call(lambda: broker.broker._flush_scheduled) is False


def test_flow_control_settings_are_checked():
    """SLOW_CONSUMER_TIMEOUT, MAX_READ_PER_ITERATION and MAX_FANOUT_BLOB are COREMQ keys; zero is coremq.E004,
    a fan-out piece above half of MAX_WRITE_BUFFER is coremq.E012."""
    from django.test import override_settings

    from coremq_broker import conf

    keys = {"SLOW_CONSUMER_TIMEOUT": 0.5, "MAX_READ_PER_ITERATION": 65536, "MAX_FANOUT_BLOB": 2**18}
    with override_settings(COREMQ=keys):
        assert conf.setting_errors() == []
        config = conf.get_config()
        assert (config.slow_consumer_timeout, config.max_read_per_iteration, config.max_fanout_blob) == (
            0.5, 65536, 2**18)
    for name in keys:
        with override_settings(COREMQ={name: 0}):
            assert [error.id for error in conf.setting_errors()] == ["coremq.E004"], name
    with override_settings(COREMQ={"MAX_FANOUT_BLOB": 2**20, "MAX_WRITE_BUFFER": 2**20}):
        assert [error.id for error in conf.setting_errors()] == ["coremq.E012"]


@pytest.mark.timeout(120)
def test_a_slow_subscriber_that_keeps_reading_paces_the_publisher_and_is_never_cut():
    """A subscriber reading 16 KiB every 5 ms (far slower than the broker) beside a fast one: the publisher is slowed
    to its pace, nobody is judged a slow consumer, and both get all 100,000 messages (23 MB) in order."""
    count = 100_000
    with start(host="127.0.0.1", port=0, log_level="WARNING") as broker:
        slow = Worker(subscriber, broker.host, broker.port, "firehose", count, 90, pace=0.005)
        fast = Worker(subscriber, broker.host, broker.port, "firehose", count, 90)
        slow.wait_ready()
        fast.wait_ready()
        writer = Worker(publisher, broker.host, broker.port, "firehose", count, 90)
        try:
            published = writer.join(100)
            results = [slow.join(100), fast.join(100)]
        finally:
            for worker in (writer, slow, fast):
                worker.kill()
        assert_all_delivered(published, results, count)
        probe = RawClient(broker.host, broker.port)
        assert probe.control({"coremq_status": True})["slow_consumers"] == 0
        probe.close()


def test_a_publisher_pipelining_tiny_publishes_gets_every_ack():
    """100,000 tiny publishes written in one go while the replies are read: all 100,000 acks arrive in order and
    the publisher is not cut as a slow consumer of its own replies (the old broker cut it after 13,785)."""
    count = 100_000
    with start(host="127.0.0.1", port=0, log_level="WARNING") as broker:
        client = RawClient(broker.host, broker.port, timeout=30)
        replies: list[dict] = []

        def read_replies() -> None:
            try:
                while len(replies) < count:
                    replies.append(client.read()[1])
            except (ConnectionError, OSError):
                pass

        thread = threading.Thread(target=read_replies, daemon=True)
        thread.start()
        client.send_raw(b"".join(encode_frame("tiny", b'{"n":%d}' % n) for n in range(count)))
        thread.join(60)
        assert [reply.get("request") for reply in replies] == list(range(1, count + 1)), replies[-1:]
        assert {reply["response"] for reply in replies} == {"OK: Message sent"}
        client.close()


def test_fan_out_in_pieces_keeps_every_frame_whole_and_in_order(broker):
    """With MAX_FANOUT_BLOB at 1 KiB, reads of 500 publishes from two publishers at once reach two subscribers
    (one of them a publisher without echo) whole, in order, each exactly once."""
    broker.close()
    broker.config = broker.config.with_options(max_fanout_blob=1024)
    broker.broker = broker._open(broker.config)
    reader = RawClient(broker.host, broker.port)
    assert reader.control({"coremq_subscribe": ["pieces"]})["response"] == "OK: Subscribe successful"
    first, second = RawClient(broker.host, broker.port), RawClient(broker.host, broker.port)
    assert second.control({"coremq_subscribe": ["pieces"]})["response"] == "OK: Subscribe successful"
    for client in (first, second):
        client.control({"coremq_options": {"reply": False}})
    reads = {client: b"".join(encode_frame("pieces", b'{"from":%d,"n":%d,"p":"%s"}' % (index, n, b"x" * 50))
                              for n in range(500)) for index, client in enumerate((first, second))}
    for client, read in reads.items():
        client.send_raw(read)
    got = [reader.read()[1] for _ in range(1000)]
    for index in (0, 1):
        assert [message["n"] for message in got if message["from"] == index] == list(range(500))
    assert [message["coremq_id"] for message in got] == list(range(1, 1001))
    echoed = [second.read()[1] for _ in range(500)]  # the first publisher's messages only: no echo of its own
    assert [(message["from"], message["n"]) for message in echoed] == [(0, n) for n in range(500)]
