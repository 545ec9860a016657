"""Nothing a client sends stops the broker: the hostile corpus over real sockets, through the fast path, the
general path, point-to-point, history and an in-process WebSocket bridge, each followed by a health probe;
and a closed connection's id stays private."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from typing import Any, Iterator

import pytest

from brokers import BrokerThread
from coremq_broker.core.broker import Broker
from coremq_broker.server import new_broker
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.registry import QueueSettings
from coremq_broker.transports.websocket.protocol import browser_number
from coremq_client.codec import FrameParser, encode_frame
from hostile import CORPUS, NAMES, Case, tcp_probe
from wire import RawClient

HISTORY = 1000


def settings_of(name: str) -> QueueSettings:
    """Queues named sized-* have a size limit, which keeps their publishes off the fast path."""
    return QueueSettings(HISTORY, max_message_size=2**20 if name.startswith("sized") else None)


@pytest.fixture
def hostile_broker() -> Iterator[BrokerThread]:
    running = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, history_length=HISTORY, shutdown_timeout=2.0),
                           queue_settings=settings_of)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def connect(hostile_broker: BrokerThread) -> Iterator[Any]:
    clients: list[RawClient] = []

    def make() -> RawClient:
        client = RawClient(hostile_broker.host, hostile_broker.port, timeout=5)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def reply_to(client: RawClient) -> dict:
    """The next frame, which must be a reply (on the own id queue, without a sender stamp)."""
    queue, message = client.read()
    assert queue == client.id and "coremq_sender" not in message, message
    return message


def publish(client: RawClient, queue: str, body: bytes) -> dict:
    client.send_raw(encode_frame(queue, body))
    return reply_to(client)


def check_answer(case: Case, reply: dict, expected_id: int) -> None:
    if case.accepted:
        assert (reply["response"], reply["id"]) == ("OK: Message sent", expected_id), (case, reply)
    else:
        assert reply["response"].startswith("ERROR: ") and case.reason in reply["response"], (case, reply)


@pytest.mark.parametrize("path", ["fast", "sized", "point-to-point"])
def test_the_corpus_over_tcp(hostile_broker: BrokerThread, connect: Any, path: str) -> None:
    """Each case is taken (next id, delivered, in history) or refused with its reason, no id used; a probe passes after each."""
    publisher, subscriber = connect(), connect()
    target = subscriber.id if path == "point-to-point" else path
    if path != "point-to-point":
        assert subscriber.control({"coremq_subscribe": [target]})["response"] == "OK: Subscribe successful"
    next_id = publish(publisher, target, b'{"before":1}')["id"] + 1
    assert subscriber.read()[0] == target
    for case in CORPUS:
        check_answer(case, publish(publisher, target, case.body), next_id)
        if case.accepted:
            name, delivered = subscriber.read()
            assert (name, delivered["coremq_id"], delivered["coremq_sender"]) == (target, next_id, publisher.id), case
            history = subscriber.control({"coremq_gethistory": {target: next_id - 1}})
            assert history["history"][target] == [delivered], case
            next_id += 1
        marker = publish(publisher, target, b'{"marker":true}')
        assert marker["id"] == next_id, (case, "an id was used")  # the connection is open, no id was burnt
        assert subscriber.read()[1]["marker"] is True
        next_id += 1
        tcp_probe(hostile_broker.host, hostile_broker.port)


def test_the_corpus_split_at_every_byte(hostile_broker: BrokerThread, connect: Any) -> None:
    """The whole corpus sent one byte per write gets the same answers, in order, on a connection that stays open."""
    publisher = connect()
    publisher.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = b"".join(encode_frame("split", case.body) for case in CORPUS)
    for index in range(len(stream)):
        publisher.send_raw(stream[index:index + 1])
    next_id = 1
    for case in CORPUS:
        reply = reply_to(publisher)
        check_answer(case, reply, next_id)
        next_id += case.accepted
    assert publish(publisher, "split", b"{}")["id"] == next_id
    tcp_probe(hostile_broker.host, hostile_broker.port)


@pytest.mark.parametrize("case", NAMES, ids=repr)
def test_queue_names(hostile_broker: BrokerThread, connect: Any, case: Any) -> None:
    """Each name is taken or refused with its reason, over the fast and the general path alike; a probe passes after."""
    publisher = connect()
    name = case.name.format(own=publisher.id)
    for body in (b'{"x":1}', b'"as a string"'):
        reply = publish(publisher, name, body)
        if case.accepted:
            assert reply["response"] == "OK: Message sent", reply
        else:
            assert reply["response"].startswith("ERROR: ") and case.reason in reply["response"], reply
    tcp_probe(hostile_broker.host, hostile_broker.port)


def test_a_closed_connections_id_stays_private(hostile_broker: BrokerThread, connect: Any) -> None:
    """After A closes, nobody may subscribe to or read its id or sub-addresses; messages sent there are dropped and counted."""
    a, b, c = connect(), connect(), connect()
    a_id = a.id
    a.close()
    for _ in range(500):
        if b.control({"coremq_status": True})["connections"] == 2:
            break
    for name in (a_id, a_id + "/1", a_id + "/\u00b2"):
        for action, request in (("subscribe", {"coremq_subscribe": [name]}), ("history", {"coremq_gethistory": [name]})):
            assert b.control(request)["response"] == (f"ERROR: permission denied: {action} on queue {name!r} "
                                                      "(another connection's private queue)")
        assert publish(c, name, b'{"for":"A"}')["response"] == f"ERROR: no such connection: message to {name!r} dropped"
    assert b.control({"coremq_status": True})["dead_letters"] == 3
    assert publish(c, "after", b"{}")["id"] == 1  # nothing else happened to c
    assert hostile_broker.call(lambda: [name for name in hostile_broker.broker.registry.queues
                                        if name.startswith(a_id)]) == []


def test_an_id_no_connection_has_is_no_queue(connect: Any) -> None:
    """A name shaped like a connection id that no connection holds cannot be subscribed to, read or published to."""
    client = connect()
    name = str(uuid.uuid4())
    assert "another connection's private queue" in client.control({"coremq_subscribe": [name]})["response"]
    assert "no such connection" in publish(client, name, b"{}")["response"]
    assert client.control({"coremq_subscribe": [name.upper()]})["response"] == "OK: Subscribe successful"


def test_closed_ids_cost_no_memory(hostile_broker: BrokerThread, connect: Any) -> None:
    """Hundreds of closed connections, each sent to after it closed, leave no queue behind."""
    client = connect()
    before = hostile_broker.call(lambda: len(hostile_broker.broker.registry.queues))
    closed = []
    for _ in range(200):
        other = connect()
        other.control({"coremq_unsubscribe": [other.id]})  # a connection keeps its own queues: this does nothing
        publish(other, other.id + "/x", b"{}")
        closed.append(other.id)
        other.close()
    for name in closed:
        publish(client, name, b"{}")
        publish(client, name + "/x", b"{}")
    after = hostile_broker.call(lambda: len(hostile_broker.broker.registry.queues))
    assert after == before and hostile_broker.call(lambda: hostile_broker.broker.registry.dead_letters) == 400


def test_unsubscribing_from_the_own_id_does_nothing(connect: Any) -> None:
    """A connection stays subscribed to its id and sub-addresses: unsubscribing leaves point-to-point working."""
    a, b = connect(), connect()
    names = [a.id, a.id + "/1"]
    for name in names:
        assert publish(b, name, b'{"before":1}')["response"] == "OK: Message sent"
        assert a.read()[0] == name
    assert a.control({"coremq_unsubscribe": names})["response"] == "OK: Unsubscribe successful"
    for name in names:
        assert publish(b, name, b'{"after":1}')["response"] == "OK: Message sent"
        queue, message = a.read()
        assert (queue, message["after"]) == (name, 1)


@pytest.mark.parametrize("sub,number", [("1", 1), ("42", 42), ("0", None), ("03", None), ("+3", None), ("-3", None),
                                        ("\u00b2", None), ("\u0663", None), ("\uff13", None), ("3 ", None),
                                        ("3\n", None), ("", None), ("1" * 19, None), ("3/4", None)])
def test_browser_numbers_are_ascii_decimals(sub: str, number: int | None) -> None:
    """Only the form the bridge gives names a browser: no Unicode digits, signs, leading zeros or trailing bytes."""
    assert browser_number(sub) == number


# -- an in-process WebSocket bridge (as run_coremq serves browsers) ---------------------------------------------


class AsyncRaw:
    """A raw TCP client on the test's loop."""

    async def open(self, host: str, port: int) -> "AsyncRaw":
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.parser = FrameParser(max_frame_size=2**31)
        self.pending: list[tuple[str, bytes]] = []
        self.id, _ = await self.read()
        return self

    async def read(self) -> tuple[str, Any]:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "closed by the broker"
            self.parser.receive_data(data)
            self.pending.extend(self.parser.events())
        queue, body = self.pending.pop(0)
        return queue, json.loads(body)

    async def publish(self, queue: str, body: bytes) -> dict:
        self.writer.write(encode_frame(queue, body))
        name, reply = await self.read()
        assert name == self.id
        return reply

    def close(self) -> None:
        self.writer.close()


class Page:
    """A browser as the bridge sees it: the ASGI send collects its frames."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[dict] = asyncio.Queue()

    async def send(self, message: dict) -> None:
        assert message["type"] == "websocket.send", message
        await self.frames.put(json.loads(message["text"]))

    async def next(self, kind: str = "message", timeout: float = 1.0) -> dict:
        while True:
            frame = await asyncio.wait_for(self.frames.get(), timeout)
            if frame["type"] == kind:
                return frame


async def browser_probe(bridge: Any, broker: Broker) -> None:
    """The health probe of a browser: a welcome, a subscription, a publish, its delivery within a second."""
    page = Page()
    browser = bridge.attach(page.send)
    try:
        assert (await page.next("welcome"))["connection_id"] == bridge.browser_id(browser)
        await bridge.subscribe(browser, ["probe"])
        assert (await bridge.publish(browser, "probe", {"probe": browser.number}))["response"] == "OK: Message sent"
        assert (await page.next())["message"] == {"probe": browser.number}
    finally:
        bridge.detach(browser)
    await asyncio.to_thread(tcp_probe, broker.host, broker.port)


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_the_corpus_through_an_in_process_bridge() -> None:
    """A browser on an in-process bridge gets every accepted case, by subscription and by its id; stray
    sub-addresses of the bridge reach no one; browsers and TCP clients pass the probe after each case."""
    from coremq_broker.transports.websocket.links import close_bridges, open_bridge

    broker = new_broker(BrokerConfig(host="127.0.0.1", port=0, history_length=HISTORY, shutdown_timeout=2.0))
    await broker.start()
    try:
        bridge = await open_bridge(broker.config)
        assert bridge.link.kind == "in-process"
        page = Page()
        browser = bridge.attach(page.send)
        await page.next("welcome")
        await bridge.subscribe(browser, ["hq"])
        publisher = await AsyncRaw().open(broker.host, broker.port)
        for case in CORPUS:
            for target in ("hq", bridge.browser_id(browser)):
                reply = await publisher.publish(target, case.body)
                assert reply["response"].startswith("OK:" if case.accepted else "ERROR:"), (case, reply)
                if case.accepted:
                    frame = await page.next()
                    assert (frame["queue"], frame["id"]) == (target, reply["id"]), case
                    history = await bridge.history(browser, {"hq": None})
                    assert history["history"]["hq"], case
            await browser_probe(bridge, broker)
        stray = [f"{bridge.connection_id}/{sub}" for sub in ("\u00b2", "\u0663", "03", "+1", "0", "999")]
        for name in stray:
            assert (await publisher.publish(name, b'{"stray":1}'))["response"] == "OK: Message sent"
            await browser_probe(bridge, broker)
        assert bridge.dead_letters == len(stray)
        assert page.frames.empty()  # no stray message reached the browser
        publisher.close()
    finally:
        await close_bridges()
        await broker.close()
