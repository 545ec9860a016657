"""The broker's resource bounds over real sockets: deadlines, connections per address, queues, history bytes, pages.

Each test runs a broker of its own with small limits (coremq_broker/core/limits.py,
docs/security.md "Limits").
"""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers import BrokerThread
from coremq_broker.core.access import Principal
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.limits import HISTORY_ENTRY_BYTES
from coremq_broker.core.registry import QueueSettings
from coremq_broker.status.metrics import render
from coremq_broker.status.source import shape
from coremq_client.codec import encode_frame
from coremq_client.sync_client import MessageQueue
from wire import RawClient


@contextmanager
def running(broker_options: dict[str, Any] | None = None, **options: Any) -> Iterator[BrokerThread]:
    """A broker with ``options`` as its configuration, stopped afterwards."""
    config = BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, **options)
    thread = BrokerThread(config, **(broker_options or {}))
    try:
        yield thread
    finally:
        thread.stop()


def status(broker: BrokerThread, **detail: bool) -> dict[str, Any]:
    return broker.call(lambda: broker.broker.status(**detail))


def metric(broker: BrokerThread, name: str) -> float:
    """A broker-wide sample of /metrics, rendered from the broker's status as the web app does."""
    text = render(shape(status(broker, connections=True, queues=True), "local")).decode()
    samples = {sample.name: sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if not sample.labels}
    return samples[name]


def publish(client: RawClient, queue: str, message: dict) -> dict:
    client.send(queue, message)
    return client.read()[1]


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


# -- deadlines ---------------------------------------------------------------------


def test_idle_socket_without_a_first_frame_is_closed_with_an_error():
    """While connections are scarce, one that sends no frame within FIRST_FRAME_TIMEOUT of the welcome gets ERROR: timeout and is closed."""
    with running(first_frame_timeout=0.5, max_connections_per_address=4) as broker:  # 2 of 4: scarce
        idle = RawClient(broker.host, broker.port)
        active = RawClient(broker.host, broker.port)
        assert active.control({"coremq_subscribe": ["q"]})["response"] == "OK: Subscribe successful"
        started = time.monotonic()
        frames = idle.read_until_closed()
        assert 0.4 <= time.monotonic() - started < 3
        assert frames == [(idle.id, {"response": "ERROR: timeout: no frame within 0.5 seconds of the welcome", "code": "timeout"})]
        time.sleep(0.6)  # past the deadline: the connection that sent a frame has none between frames
        assert publish(active, "q", {"n": 1})["response"] == "OK: Message sent"
        assert status(broker)["timeouts"] == 1
        assert metric(broker, "coremq_timeouts_total") == 1


def test_a_silent_client_keeps_its_place_until_connections_are_scarce():
    """A client silent past FIRST_FRAME_TIMEOUT (a 2015 client that publishes later) keeps its connection until its address holds half its cap; then it is closed."""
    with running(first_frame_timeout=0.3, max_connections_per_address=6) as broker:
        early = RawClient(broker.host, broker.port)
        late = RawClient(broker.host, broker.port)
        time.sleep(1.0)  # three deadlines: 2 of 6 connections, not scarce
        assert publish(late, "q", {"n": 1})["response"] == "OK: Message sent"  # its first frame, late
        assert status(broker)["timeouts"] == 0
        others = [RawClient(broker.host, broker.port) for _ in range(1)]  # 3 of 6: scarce now
        for other in others:
            assert other.control({"coremq_options": {}})["response"].startswith("OK")
        assert early.read_until_closed() == [
            (early.id, {"response": "ERROR: timeout: no frame within 0.3 seconds of the welcome", "code": "timeout"})]
        assert publish(late, "q", {"n": 2})["response"] == "OK: Message sent"  # it spoke: no deadline
        assert status(broker)["timeouts"] == 1
        for client in [late, *others]:
            client.close()


def test_partial_frame_held_past_the_deadline_is_closed_with_an_error():
    """A frame started and not completed within FRAME_TIMEOUT closes its connection with ERROR: timeout."""
    with running(frame_timeout=0.5, first_frame_timeout=5.0) as broker:
        client = RawClient(broker.host, broker.port)
        other = RawClient(broker.host, broker.port)
        assert publish(client, "q", {"n": 1})["response"] == "OK: Message sent"
        client.send_raw(b"+1000 q {\"big\": \"")  # a header and the start of a 1,000-byte frame, never finished
        frames = client.read_until_closed()
        assert frames == [(client.id, {"response": "ERROR: timeout: frame not completed within 0.5 seconds", "code": "timeout"})]
        assert publish(other, "q", {"n": 2})["response"] == "OK: Message sent"  # everyone else goes on
        assert status(broker)["timeouts"] == 1


def test_a_first_frame_left_half_sent_is_cut_at_the_frame_deadline():
    """A first frame begun and never finished is a frame in progress: FRAME_TIMEOUT applies, not the welcome's rule."""
    with running(frame_timeout=0.5, first_frame_timeout=60.0) as broker:
        client = RawClient(broker.host, broker.port)
        other = RawClient(broker.host, broker.port)
        client.send_raw(b"+20 zer")  # connections are not scarce: a silent client would keep its place
        frames = client.read_until_closed()
        assert frames == [(client.id, {"response": "ERROR: timeout: frame not completed within 0.5 seconds",
                                       "code": "timeout"})]
        assert publish(other, "q", {"n": 1})["response"] == "OK: Message sent"
        assert status(broker)["timeouts"] == 1


def test_a_frame_trickled_byte_by_byte_is_cut_at_the_deadline():
    """Bytes that keep arriving do not extend a frame's deadline: a frame must be complete FRAME_TIMEOUT after it began."""
    with running(frame_timeout=0.5) as broker:
        client = RawClient(broker.host, broker.port)
        assert publish(client, "q", {"n": 1})["response"] == "OK: Message sent"
        frame = encode_frame("q", json.dumps({"pad": "x" * 40}).encode())
        started = time.monotonic()
        with pytest.raises(OSError):
            for byte in frame:
                client.send_raw(bytes([byte]))
                time.sleep(0.05)  # the whole frame would take 2.5 s
        assert time.monotonic() - started < 2.4
        assert client.read_until_closed() == [
            (client.id, {"response": "ERROR: timeout: frame not completed within 0.5 seconds", "code": "timeout"})]


def test_a_stream_that_always_ends_mid_frame_but_completes_frames_stays_open():
    """Reads that each complete a frame re-arm the deadline, though the input never rests between frames."""
    with running(frame_timeout=0.5) as broker:
        client = RawClient(broker.host, broker.port)
        frames = [encode_frame("q", json.dumps({"n": n, "pad": "x" * 50}).encode()) for n in range(12)]
        stream = b"".join(frames)
        cut = [sum(len(f) for f in frames[: n + 1]) + len(frames[n + 1]) // 2 if n + 1 < len(frames) else len(stream)
               for n in range(len(frames))]
        position = 0
        for end in cut:  # every send ends half-way into the next frame; 12 x 0.2 s = 2.4 s in all
            client.send_raw(stream[position:end])
            position = end
            time.sleep(0.2)
        replies = [client.read()[1] for _ in frames]
        assert [reply["id"] for reply in replies] == list(range(1, 13))
        assert status(broker)["timeouts"] == 0


# -- connections per address ----------------------------------------------------------


async def _authenticate(credentials: dict) -> Principal | None:
    return Principal("svc", 1) if credentials.get("token") == "tok" else None


def test_anonymous_connections_per_address_are_capped_and_other_addresses_are_not():
    """The 101st anonymous connection from one address is refused; another address still connects; a login frees a place."""
    config = BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0)
    assert config.max_connections_per_address == 100
    broker = BrokerThread(config, authenticator=_authenticate)
    clients: list[RawClient] = []
    try:
        clients = [RawClient(broker.host, broker.port) for _ in range(100)]
        refused = RawClient(broker.host, broker.port, read_welcome=False)
        assert [message for _, message in refused.read_until_closed()] == [
            {"response": "ERROR: too many connections from 127.0.0.1: limit is 100", "code": "too_many_connections"}]
        from_elsewhere = RawClient(broker.host, broker.port, source="127.0.0.2")
        assert from_elsewhere.welcome["response"].startswith("OK: Welcome")
        assert status(broker)["refused_per_address"] == 1
        # A connection that logs in counts against its user, not its address: a place is free again.
        assert clients[0].control({"coremq_auth": {"token": "tok"}})["response"].startswith("OK")
        again = RawClient(broker.host, broker.port)
        assert again.welcome["response"].startswith("OK: Welcome")
        clients += [refused, from_elsewhere, again]
        # Closing connections frees their places too.
        before = status(broker)["connections"]
        assert before == 102
        for client in clients[1:11]:
            client.close()
        assert wait_for(lambda: status(broker)["connections"] == before - 10)
        more = [RawClient(broker.host, broker.port) for _ in range(10)]
        assert all(client.welcome["response"].startswith("OK: Welcome") for client in more)
        clients += more
    finally:
        for client in clients:
            client.close()
        broker.stop()

# -- queues --------------------------------------------------------------------------


def test_new_queues_past_the_limit_are_refused_with_a_clear_error():
    """Past MAX_QUEUES a publish or subscribe to a new queue gets ERROR: too many queues; existing queues go on."""
    with running(max_queues=5, queue_idle_timeout=3600) as broker:
        client = RawClient(broker.host, broker.port)
        others = [RawClient(broker.host, broker.port) for _ in range(3)]  # id queues do not count
        for name in "abcd":
            assert publish(client, name, {"n": 1})["response"] == "OK: Message sent"
        assert client.control({"coremq_subscribe": ["e"]})["response"] == "OK: Subscribe successful"
        refused = publish(client, "f", {"n": 1})
        assert refused["response"] == "ERROR: too many queues: limit is 5" and refused["queue"] == "f"
        assert client.control({"coremq_subscribe": ["f", "g"]})["response"] == "ERROR: too many queues: limit is 5"
        assert publish(others[0], "a", {"n": 2})["response"] == "OK: Message sent"
        assert others[1].control({"coremq_subscribe": ["b"]})["response"] == "OK: Subscribe successful"
        described = status(broker, queues=True)
        assert sorted(q["name"] for q in described["queue_list"]) == list("abcde")
        assert described["queues_refused"] == 2
        # A queue that holds nothing makes room when the limit is reached (searched at most once a second).
        assert client.control({"coremq_unsubscribe": ["e"]})["response"].startswith("OK")
        time.sleep(1.05)
        assert publish(client, "f", {"n": 1})["response"] == "OK: Message sent"
        described = status(broker, queues=True)
        assert sorted(q["name"] for q in described["queue_list"]) == list("abcdf")
        assert described["queues_forgotten"] == 1


def test_a_queue_that_holds_nothing_is_forgotten_after_the_idle_timeout():
    """A queue with no subscribers, no history and no settings of its own is forgotten after QUEUE_IDLE_TIMEOUT."""
    special = QueueSettings(history_length=0)
    default = QueueSettings(history_length=10)
    options = {"queue_settings": lambda name: special if name == "special" else default}
    with running(queue_idle_timeout=0.3, broker_options=options) as broker:
        client = RawClient(broker.host, broker.port)
        listener = RawClient(broker.host, broker.port)
        assert client.control({"coremq_subscribe": ["passing", "special", "kept", "heard"]})["response"].startswith("OK")
        assert listener.control({"coremq_subscribe": ["heard"]})["response"].startswith("OK")
        assert publish(client, "kept", {"n": 1})["response"] == "OK: Message sent"
        for n in range(3):
            assert publish(client, "purged", {"n": n})["id"] == n + 1
        assert client.control({"coremq_admin": {"action": "purge", "queue": "purged"}})["purged"] == 3
        assert client.control({"coremq_unsubscribe": ["passing", "special", "kept", "heard"]})["response"].startswith("OK")
        names = lambda: sorted(q["name"] for q in status(broker, queues=True)["queue_list"])  # noqa: E731
        assert wait_for(lambda: "passing" not in names() and "purged" not in names(), timeout=5)
        time.sleep(0.5)  # another sweep or two
        assert names() == ["heard", "kept", "special"]  # a listener, a history, settings of its own
        assert status(broker)["queues_forgotten"] == 2
        # A forgotten queue used again starts its ids at 1: a resuming client sees its numbering restart.
        reply = client.control({"coremq_gethistory": {"purged": 3}})
        assert reply["sequence"]["purged"] == {"first": None, "last": 0}
        assert publish(client, "purged", {"n": 0})["id"] == 1


# -- history bytes -------------------------------------------------------------------


def _held(broker: BrokerThread) -> tuple[int, int]:
    """(what the bounds count, what the histories really hold), read on the broker's loop."""
    def read() -> tuple[int, int]:
        real = sum(len(entry[1]) + HISTORY_ENTRY_BYTES
                   for queue in broker.broker.registry.queues.values() for entry in queue.history)
        return broker.broker.bounds.history_bytes, real
    return broker.call(read)


def test_history_bytes_are_capped_by_dropping_the_least_recently_published_first():
    """Past MAX_HISTORY_BYTES the oldest messages of the least recently published queues go; the newest stay."""
    with running(history_length=100, max_history_bytes=40_000) as broker:
        client = RawClient(broker.host, broker.port)
        pad = "x" * 1000
        for n in range(20):
            assert publish(client, "old", {"n": n, "pad": pad})["response"] == "OK: Message sent"
        # A run of 20 publishes in one write (the broker's run path) to another queue.
        client.send_raw(b"".join(encode_frame("new", json.dumps({"n": n, "pad": pad}).encode()) for n in range(20)))
        assert [client.read()[1]["id"] for _ in range(20)] == list(range(1, 21))
        counted, real = _held(broker)
        assert counted == real and 0 < real <= 40_000
        described = status(broker)
        assert described["history_bytes"] == counted and described["history_evicted"] > 0
        assert metric(broker, "coremq_history_bytes") == counted
        assert metric(broker, "coremq_history_evicted_total") == described["history_evicted"]
        reply = client.control({"coremq_gethistory": ["old", "new"]})
        assert [m["n"] for m in reply["history"]["new"]] == list(range(20))  # the newest queue is whole
        assert len(reply["history"]["old"]) < 20 and reply["sequence"]["old"]["last"] == 20
        # One client filling many queues and leaving holds no more than the limit.
        for q in range(30):
            client.send_raw(b"".join(encode_frame(f"flood{q}", json.dumps({"pad": pad}).encode()) for _ in range(10)))
            for _ in range(10):
                client.read()
        client.close()
        assert wait_for(lambda: status(broker)["connections"] == 0)
        counted, real = _held(broker)
        assert counted == real <= 40_000


def test_the_message_that_crosses_the_history_limit_stays():
    """The publish that takes the histories past MAX_HISTORY_BYTES keeps its own message, on a new queue too."""
    with running(history_length=100, max_history_bytes=40_000) as broker:
        client = RawClient(broker.host, broker.port)
        client.send_raw(b"".join(encode_frame("h", json.dumps({"n": n, "pad": "x" * 1000}).encode()) for n in range(30)))
        assert [client.read()[1]["id"] for _ in range(30)] == list(range(1, 31))
        for message in ({"pad": "y" * 16_000}, {"pad": "z" * 16_000, "n": [1]}):  # both publish paths
            queue = f"new{len(message)}"
            assert publish(client, queue, message)["id"] == 1
            assert client.control({"coremq_gethistory": [queue]})["history"][queue][0]["pad"] == message["pad"]
        assert status(broker)["history_evicted"] > 0 and status(broker)["history_bytes"] <= 40_000


def test_history_bytes_are_counted_exactly_through_every_change():
    """Appends, runs, full rings, point-to-point messages, a shorter history, a purge and a closed connection keep the count exact."""
    with running(history_length=5) as broker:
        publisher = RawClient(broker.host, broker.port)
        target = RawClient(broker.host, broker.port)
        for n in range(8):  # single publishes into a ring of 5
            publish(publisher, "ring", {"n": n})
        publisher.send_raw(b"".join(encode_frame("ring", json.dumps({"n": n, "s": "y" * n}).encode()) for n in range(7)))
        for _ in range(7):
            publisher.read()
        publisher.send_raw(b"".join(encode_frame("short", b'{"a":%d}' % n) for n in range(3)))
        for _ in range(3):
            publisher.read()
        publish(publisher, target.id, {"direct": True})  # kept in the target's id queue
        publish(publisher, "plain", ["an", "array"])  # the general path
        counted, real = _held(broker)
        assert counted == real > 0
        broker.call(lambda: broker.broker.registry.reload_settings(lambda name: QueueSettings(history_length=2)))
        counted, shorter = _held(broker)
        assert counted == shorter < real
        assert publisher.control({"coremq_admin": {"action": "purge", "queue": "ring"}})["response"] == "OK: Purged"
        counted, purged = _held(broker)
        assert counted == purged < shorter
        target.close()
        assert wait_for(lambda: status(broker)["connections"] == 1)
        counted, real = _held(broker)
        assert counted == real and counted == status(broker)["history_bytes"]


# -- history pages --------------------------------------------------------------------


def _fill(client: RawClient, queues: list[str], per_queue: int) -> None:
    for name in queues:
        client.send_raw(b"".join(encode_frame(name, json.dumps({"q": name, "n": n, "pad": "z" * 500}).encode())
                                 for n in range(per_queue)))
        for _ in range(per_queue):
            assert client.read()[1]["response"] == "OK: Message sent"


def test_a_history_reply_is_never_larger_than_a_frame_and_says_more():
    """A 50-queue history request yields replies within MAX_FRAME_SIZE, naming in "more" what is left for the next page."""
    limit = 16 * 2**10
    with running(history_length=20, max_frame_size=limit) as broker:
        client = RawClient(broker.host, broker.port)
        queues = [f"page{q:02d}" for q in range(50)]
        _fill(client, queues, 20)  # 50 x 20 x ~600 bytes: about 600 KB of history
        got: dict[str, list[int]] = {name: [] for name in queues}
        since: dict[str, int] = {name: 0 for name in queues}
        pages = 0
        while since:
            client.send(client.id, {"coremq_gethistory": since})
            frame = client.read_frame()
            assert len(frame.queue) + 1 + len(frame.body) <= limit
            reply = json.loads(frame.body)
            pages += 1
            for name, messages in reply["history"].items():
                got[name] += [m["n"] for m in messages]
            if reply.get("more"):  # a reply that leaves some for later always brings something
                assert any(reply["history"].values())
            since = {name: max([m["coremq_id"] for m in reply["history"][name]], default=since[name])
                     for name in reply.get("more", {})}
        assert got == {name: list(range(20)) for name in queues}
        assert pages >= 30  # about 600 KB in pages of at most 16 KiB
        assert status(broker)["history_pages"] == pages - 1


def test_the_python_client_gets_every_message_by_paging():
    """MessageQueue.history() pages through "more" and gets every message of 50 queues once, in order."""
    limit = 16 * 2**10
    with running(history_length=20, max_frame_size=limit) as broker:
        publisher = RawClient(broker.host, broker.port)
        queues = [f"py{q:02d}" for q in range(50)]
        _fill(publisher, queues, 20)
        got: dict[str, list[int]] = {name: [] for name in queues}
        with MessageQueue(broker.host, broker.port, max_frame_size=limit, reconnect=False) as mq:
            since = {name: 0 for name in queues}
            while since:
                reply = mq.history(*since, since=since)
                for name, messages in reply["history"].items():
                    got[name] += [m["n"] for m in messages]
                since = {name: reply["history"][name][-1]["coremq_id"] if reply["history"][name] else since[name]
                         for name in reply.get("more", {})}
        assert got == {name: list(range(20)) for name in queues}


def test_a_message_too_large_for_any_reply_is_left_out_and_counted():
    """A stored message that cannot fit in a reply on its own is skipped (the client sees its id missing), never sent oversized."""
    limit = 4096
    with running(max_frame_size=limit) as broker:
        client = RawClient(broker.host, broker.port)
        assert publish(client, "big", {"n": 1})["response"] == "OK: Message sent"
        body = json.dumps({"n": 2, "pad": "b" * (limit - 40)}).encode()  # fits a publish, not with its stamps
        client.send_raw(encode_frame("big", body))
        assert client.read()[1]["response"] == "OK: Message sent"
        assert publish(client, "big", {"n": 3})["response"] == "OK: Message sent"
        client.send(client.id, {"coremq_gethistory": ["big"]})
        frame = client.read_frame()
        assert len(frame.queue) + 1 + len(frame.body) <= limit
        reply = json.loads(frame.body)
        assert [m["coremq_id"] for m in reply["history"]["big"]] == [1, 3] and "more" not in reply
        assert status(broker)["history_skipped"] == 1


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)  # channels closes old database connections when a WebSocket ends
async def test_a_browser_gets_a_paged_history_whole():
    """The WebSocket bridge gathers the pages of a long history, so a browser (coremq.js) gets every message at once."""
    from channels.testing import WebsocketCommunicator

    from coremq_broker.server import new_broker
    from coremq_broker.transports.websocket.links import close_bridges
    from coremq_project.asgi import application

    broker = new_broker(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=2.0, history_length=20,
                                     max_frame_size=16 * 2**10))
    await broker.start()
    browser = WebsocketCommunicator(application, "/ws/coremq/", headers=[(b"origin", b"http://127.0.0.1:8000")])
    try:
        queues = [f"web{q}" for q in range(10)]
        for name in queues:
            for n in range(20):
                broker.deliver(broker.registry.queue(name), {"n": n, "pad": "w" * 500})
        connected, _ = await browser.connect(timeout=10)
        assert connected
        assert json.loads(await browser.receive_from(10))["type"] == "welcome"
        await browser.send_to(text_data=json.dumps({"action": "history", "queues": queues, "ref": "h"}))
        answer = json.loads(await browser.receive_from(10))
        assert answer["type"] == "history" and answer["ref"] == "h"
        assert {name: [e["message"]["n"] for e in answer["history"][name]] for name in queues} == {
            name: list(range(20)) for name in queues}
        assert broker.bounds.history_pages > 0  # it did come in pages
    finally:
        await browser.disconnect()
        await close_bridges()
        await broker.close()


def test_bounds_are_checked_settings():
    """Each bound is a COREMQ key with its default; 0 switches off the per-address and queue limits; a 0 deadline is coremq.E004."""
    from django.test import override_settings

    from coremq_broker import conf

    bounds = {"FIRST_FRAME_TIMEOUT": 2.5, "FRAME_TIMEOUT": 4, "MAX_CONNECTIONS_PER_ADDRESS": 0, "MAX_QUEUES": 0,
              "MAX_HISTORY_BYTES": 2**20, "QUEUE_IDLE_TIMEOUT": 60}
    with override_settings(COREMQ=bounds):
        assert conf.setting_errors() == []
        config = conf.get_config()
        assert (config.first_frame_timeout, config.frame_timeout, config.max_connections_per_address,
                config.max_queues, config.max_history_bytes, config.queue_idle_timeout) == (2.5, 4, 0, 0, 2**20, 60)
    for name in ("FIRST_FRAME_TIMEOUT", "FRAME_TIMEOUT", "MAX_HISTORY_BYTES", "QUEUE_IDLE_TIMEOUT"):
        with override_settings(COREMQ={name: 0}):
            assert [error.id for error in conf.setting_errors()] == ["coremq.E004"], name
    with override_settings(COREMQ={"MAX_QUEUES": "many"}):
        assert [error.id for error in conf.setting_errors()] == ["coremq.E003"]


def test_no_per_address_limit_when_it_is_zero():
    """MAX_CONNECTIONS_PER_ADDRESS = 0 lets any number of anonymous connections come from one address."""
    with running(max_connections_per_address=0) as broker:
        clients = [RawClient(broker.host, broker.port) for _ in range(120)]
        try:
            assert all(client.welcome["response"].startswith("OK: Welcome") for client in clients)
        finally:
            for client in clients:
                client.close()


def test_durable_queues_come_back_past_the_queue_limit(tmp_path):
    """A restart restores every durable queue even past MAX_QUEUES (within its history bytes); new queues are then refused."""
    path = str(tmp_path / "history.sqlite3")
    with running(durable_all=True, durable_path=path) as broker:
        client = RawClient(broker.host, broker.port)
        for name in "abcde":
            assert publish(client, name, {"n": 1})["response"] == "OK: Message sent"
        client.close()
    with running(durable_all=True, durable_path=path, max_queues=3) as broker:
        client = RawClient(broker.host, broker.port)
        reply = client.control({"coremq_gethistory": list("abcde")})
        assert {name: [m["n"] for m in messages] for name, messages in reply["history"].items()} == {
            name: [1] for name in "abcde"}
        assert publish(client, "f", {"n": 1})["response"] == "ERROR: too many queues: limit is 3"
        counted, real = _held(broker)
        assert counted == real > 0


def test_one_address_is_an_ipv4_address_or_an_ipv6_64():
    """Connections per address count an IPv6 client's whole /64 as one address, as the login throttle does."""
    from coremq_broker.core.limits import address_of

    assert address_of("192.0.2.7:40000") == "192.0.2.7"
    assert address_of("2001:db8:1:2:aaaa::1:40000") == address_of("2001:db8:1:2:bbbb::9:40001") == "2001:db8:1:2::/64"
    assert address_of("::ffff:192.0.2.7:40000") == "192.0.2.7"
    assert address_of("in-process") == ""  # the bridge: not bounded per address


def test_a_frame_started_behind_a_slow_login_keeps_its_deadline_waiting():
    """A frame begun while a login is checked (the broker does not read) gets its FRAME_TIMEOUT after the answer."""
    import asyncio

    async def slow_authenticate(credentials: dict) -> Principal | None:
        await asyncio.sleep(1.0)  # a slow password hasher or database: well past FRAME_TIMEOUT
        return Principal("slow", 1) if credentials.get("password") == "right" else None

    with running({"authenticator": slow_authenticate}, frame_timeout=0.5) as broker:
        client = RawClient(broker.host, broker.port)
        frame = encode_frame("lobby", json.dumps({"n": 1}).encode())
        login = encode_frame(client.id, json.dumps({"coremq_auth": {"username": "slow", "password": "right"}}).encode())
        client.send_raw(login + frame[:5])  # the publish begins behind the login
        assert client.read()[1]["response"] == "OK: Authenticated"
        time.sleep(0.2)  # well within FRAME_TIMEOUT of the answer
        client.send_raw(frame[5:])
        assert client.read()[1]["response"] == "OK: Message sent"
        assert status(broker)["timeouts"] == 0


def test_a_frame_held_up_by_flow_control_keeps_its_deadline_waiting():
    """While flow control holds a publisher (its subscriber does not read), the clock of its started frame waits."""
    import threading

    with running(frame_timeout=0.3, slow_consumer_timeout=2.0, max_write_buffer=64 * 2**20) as broker:
        stuck = RawClient(broker.host, broker.port)
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert stuck.control({"coremq_subscribe": ["fire"]})["response"] == "OK: Subscribe successful"
        publisher = RawClient(broker.host, broker.port, timeout=30)
        frames = b"".join(encode_frame("fire", json.dumps({"n": n, "pad": "f" * 200_000}).encode()) for n in range(60))
        sender = threading.Thread(target=publisher.send_raw, args=(frames,))
        started = time.monotonic()
        sender.start()
        replies = [publisher.read()[1] for _ in range(60)]  # held about 2 s, until the stuck one is cut
        sender.join(10)
        assert time.monotonic() - started > 1.0  # it was held well past FRAME_TIMEOUT
        assert [reply.get("id") for reply in replies] == list(range(1, 61)), replies[-1]
        assert status(broker)["timeouts"] == 0
