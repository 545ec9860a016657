"""The store from the CoreMQ protocol and from Python: coremq_get/set/delete/incr/touch over real sockets,
the same keys as the memcached port, the permission rules of coremq.store.<key>, and the errors' codes."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import time

import pytest
from pymemcache.client.base import Client

from brokers import BrokerThread
from coremq_broker.core.access import Rule, RulePolicy
from coremq_broker.core.config import BrokerConfig
from coremq_broker.store.config import StoreConfig
from coremq_broker.store.requests import StoreRequests
from coremq_broker.transports.memcached import MemcachedService
from coremq_client.async_client import AsyncMessageQueue
from coremq_client.errors import PermissionDenied, ServerError
from coremq_client.protocol import ClientProtocol, Reply
from coremq_client.sync_client import MessageQueue
from servers import ServerProcess

RULES = (
    Rule("coremq.store.public.*", frozenset({"subscribe", "publish"}), anonymous=True),
    Rule("coremq.store.readonly.*", frozenset({"subscribe"}), anonymous=True),
)


def _serve(access=None, **store_options):
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=1.0),
                          **({"access": access} if access is not None else {}))
    service = MemcachedService(StoreConfig(memcached_port=0, **store_options))
    requests = StoreRequests(service.store)
    stops = broker.call(lambda: [service.attach(broker.broker), requests.attach(broker.broker)])
    return broker, service, stops


@pytest.fixture
def served():
    broker, service, stops = _serve(memcached_max_item_size=4096)
    client = Client(("127.0.0.1", service.server.port), default_noreply=False)
    try:
        yield broker, service, client
    finally:
        client.close()
        broker.call(lambda: [stop() for stop in stops])
        broker.stop()


def _code(excinfo) -> str:
    return excinfo.value.code


def test_get_set_delete_and_the_memcached_port_see_the_same_keys(served):
    broker, service, client = served
    with MessageQueue("127.0.0.1", broker.port) as mq:
        assert mq.store_get("k") is None
        cas = mq.store_set("k", "héllo", flags=7)
        assert client.gets("k") == (b"h\xc3\xa9llo", str(cas).encode())
        item = mq.store_get("k")
        assert (item.key, item.value, item.text, item.flags, item.cas, item.expires) == (
            "k", "héllo".encode(), "héllo", 7, cas, None)
        client.set("k", b"\xff\x00binary", flags=2)
        item = mq.store_get("k")
        assert (item.value, item.flags) == (b"\xff\x00binary", 2)
        assert item.cas > cas
        mq.store_set("b", b"\x80\x81")  # not UTF-8: sent as value_base64
        assert client.get("b") == b"\x80\x81"
        assert mq.store_delete("k") is True
        assert mq.store_delete("k") is False
        assert client.get("k") is None


def test_modes_and_cas_answer_errors_with_codes(served):
    broker, service, client = served
    with MessageQueue("127.0.0.1", broker.port) as mq:
        cas = mq.store_set("c", "1")
        with pytest.raises(ServerError, match=r"^key exists: 'c'$") as error:
            mq.store_set("c", "2", mode="add")
        assert _code(error) == "store_exists"
        with pytest.raises(ServerError) as error:
            mq.store_set("missing", "2", mode="replace")
        assert _code(error) == "store_not_found"
        new = mq.store_set("c", "2", cas=cas)
        assert new > cas and client.get("c") == b"2"
        with pytest.raises(ServerError, match=rf"^cas mismatch: 'c' changed since cas {cas}$") as error:
            mq.store_set("c", "3", cas=cas)  # the cas read before the last write
        assert _code(error) == "store_cas_mismatch"
        client.set("c", b"4")  # a write over memcached's port changes the cas too
        with pytest.raises(ServerError) as error:
            mq.store_set("c", "5", cas=new)
        assert _code(error) == "store_cas_mismatch"
        with pytest.raises(ServerError) as error:
            mq.store_set("gone", "5", cas=new)
        assert _code(error) == "store_not_found"
        mq.store_set("c", "-", mode="append")
        mq.store_set("c", "+", mode="prepend")
        assert mq.store_get("c").value == b"+4-"
        with pytest.raises(ServerError) as error:
            mq.store_set("big", "x" * 5000)  # the item limit is 4096 here
        assert _code(error) == "store_too_large"
        with pytest.raises(ServerError) as error:
            mq.store_set("c", "x" * 4040, mode="append")  # 1 + 4043 + 59 > 4096
        assert _code(error) == "store_too_large"
        assert mq.store_get("c").value == b"+4-"


def test_incr_wraps_stops_at_zero_and_refuses_what_is_no_number(served):
    broker, service, client = served
    with MessageQueue("127.0.0.1", broker.port) as mq:
        with pytest.raises(ServerError) as error:
            mq.store_incr("n")
        assert _code(error) == "store_not_found"
        mq.store_set("n", "10")
        assert mq.store_incr("n") == 11
        assert mq.store_incr("n", 5) == 16
        assert mq.store_incr("n", -20) == 0
        assert client.incr("n", 3) == 3
        assert mq.store_get("n").value.strip() == b"3"
        mq.store_set("n", str(2**64 - 3))
        assert mq.store_incr("n", 2) == 2**64 - 1  # an unsigned 64-bit number in the reply
        assert mq.store_incr("n", 2) == 1
        mq.store_set("text", "abc")
        with pytest.raises(ServerError, match="^value not numeric: 'text'") as error:
            mq.store_incr("text")
        assert _code(error) == "store_not_numeric"


def test_ttl_and_touch(served):
    broker, service, client = served
    with MessageQueue("127.0.0.1", broker.port) as mq:
        mq.store_set("t", "1", ttl=-1)  # memcached: a negative exptime has expired already
        assert mq.store_get("t") is None and client.get("t") is None
        before = time.time()
        mq.store_set("t", "1", ttl=100)
        assert before + 99 <= mq.store_get("t").expires <= time.time() + 101
        assert mq.store_touch("t", 0) is True
        assert mq.store_get("t").expires is None
        assert mq.store_touch("t", -1) is True
        assert mq.store_get("t") is None
        assert mq.store_touch("t", 10) is False
        mq.store_set("s", "1", ttl=1)
        assert client.get("s") == b"1"
        deadline = time.monotonic() + 10
        while mq.store_get("s") is not None:  # gone after a second (no timing asserted)
            assert time.monotonic() < deadline
            time.sleep(0.2)


def _raw_session(port: int):
    """A bare TCP connection speaking the protocol through ClientProtocol: sends any request, reads its reply."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    protocol = ClientProtocol()
    while protocol.connection_id is None:
        protocol.receive_data(sock.recv(65536))

    def ask(message: dict) -> dict:
        number, data = protocol.request(message)
        sock.sendall(data)
        while True:
            for event in protocol.receive_data(sock.recv(65536)):
                if isinstance(event, Reply) and event.request == number:
                    return event.message

    return sock, ask


@pytest.mark.parametrize("request_, text", [
    ({"coremq_get": "has space"}, "coremq_get takes a key of 1 to 250 bytes without spaces or control characters"),
    ({"coremq_get": ""}, "coremq_get takes a key of 1 to 250 bytes"),
    ({"coremq_get": "k" * 251}, "coremq_get takes a key of 1 to 250 bytes"),
    ({"coremq_get": "tab\tkey"}, "coremq_get takes a key"),
    ({"coremq_get": 5}, "coremq_get takes a key or an object with a key"),
    ({"coremq_get": {"key": "k", "extra": 1}}, "coremq_get takes no field 'extra'"),
    ({"coremq_set": {"key": "k"}}, "coremq_set takes a value (text) or a value_base64"),
    ({"coremq_set": {"key": "k", "value": "v", "value_base64": "dg=="}}, "coremq_set takes a value"),
    ({"coremq_set": {"key": "k", "value_base64": "!!"}}, "coremq_set takes value_base64 in base64"),
    ({"coremq_set": {"key": "k", "value": "v", "flags": -1}}, "coremq_set takes an integer flags from 0 to 4294967295"),
    ({"coremq_set": {"key": "k", "value": "v", "flags": True}}, "coremq_set takes an integer flags"),
    ({"coremq_set": {"key": "k", "value": "v", "ttl": "1"}}, "coremq_set takes an integer ttl"),
    ({"coremq_set": {"key": "k", "value": "v", "mode": "cas"}}, "coremq_set takes a mode of set, add, replace"),
    ({"coremq_set": {"key": "k", "value": "v", "mode": "add", "cas": 1}}, "coremq_set takes a cas with the mode set"),
    ({"coremq_set": {"key": "k", "value": "v", "cas": 0}}, "coremq_set takes an integer cas from 1"),
    ({"coremq_incr": {"key": "k", "delta": 1.5}}, "coremq_incr takes an integer delta"),
    ({"coremq_touch": {"key": "k"}}, "coremq_touch takes an integer ttl"),
    ({"coremq_get": "k", "coremq_delete": "k"}, "a control request holds exactly one control key"),
])
def test_malformed_requests_are_refused_and_the_connection_goes_on(served, request_, text):
    broker, service, client = served
    sock, ask = _raw_session(broker.port)
    try:
        reply = ask(request_)
        assert reply["response"].startswith(f"ERROR: {text}"), reply
        assert reply["code"] == "bad_request"
        assert ask({"coremq_set": {"key": "after", "value": "ok"}})["response"] == "OK: Stored"
        assert ask({"coremq_get": {"key": "after"}}) | {"cas": 0} == {
            "response": "OK: Value", "key": "after", "found": True, "value": "ok", "size": 2, "flags": 0,
            "cas": 0, "expires": None, "request": 3}
    finally:
        sock.close()


def test_a_broker_without_the_store_answers_unknown_control_key():
    broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=1.0))
    try:
        with MessageQueue("127.0.0.1", broker.port) as mq:
            with pytest.raises(ServerError, match="unknown control key 'coremq_get'") as error:
                mq.store_get("k")
            assert _code(error) == "unknown_request"
    finally:
        broker.stop()


def test_permission_rules_of_coremq_store_key_apply():
    """get needs subscribe on coremq.store.<key>; set, delete, incr and touch need publish."""
    broker, service, stops = _serve(access=RulePolicy(RULES, default="deny"))
    try:
        service.store.set(b"readonly.x", b"1")
        service.store.set(b"secret", b"1")
        with MessageQueue("127.0.0.1", broker.port) as mq:
            mq.store_set("public.a", "1")
            assert mq.store_incr("public.a") == 2
            assert mq.store_get("readonly.x").value == b"1"
            for call in (lambda: mq.store_set("readonly.x", "2"), lambda: mq.store_delete("readonly.x"),
                         lambda: mq.store_incr("readonly.x"), lambda: mq.store_touch("readonly.x", 5)):
                with pytest.raises(PermissionDenied, match=r"permission denied: publish on queue "
                                                           r"'coremq.store.readonly.x'") as error:
                    call()
                assert _code(error) == "permission_denied"
            with pytest.raises(PermissionDenied, match="subscribe on queue 'coremq.store.secret'"):
                mq.store_get("secret")
        assert service.store.get(b"readonly.x").value == b"1"
    finally:
        broker.call(lambda: [stop() for stop in stops])
        broker.stop()


def test_changes_made_over_the_protocol_are_watched(served):
    broker, service, client = served
    with MessageQueue("127.0.0.1", broker.port, queues=["coremq.store.w"]) as watcher, \
            MessageQueue("127.0.0.1", broker.port) as mq:
        mq.store_set("w", "1")
        mq.store_incr("w", 2)
        mq.store_delete("w")
        events = [watcher.get_message(timeout=5)[1] for _ in range(3)]
        assert [(m["event"], m.get("value")) for m in events] == [("set", "1"), ("incr", "3"), ("delete", None)]


def test_the_async_client(served):
    broker, service, client = served

    async def run() -> None:
        async with AsyncMessageQueue("127.0.0.1", broker.port) as mq:
            assert await mq.store_get("a") is None
            cas = await mq.store_set("a", "5", ttl=0)
            assert (await mq.store_get("a")).cas == cas
            assert await mq.store_incr("a", 10) == 15
            with pytest.raises(ServerError) as error:
                await mq.store_set("a", "x", cas=cas)
            assert error.value.code == "store_cas_mismatch"
            assert await mq.store_touch("a", 100) is True
            assert await mq.store_delete("a") is True

    asyncio.run(run())
    assert client.get("a") is None


def test_run_coremq_serves_the_store_requests(tmp_path):
    """Under run_coremq the control requests and the memcached port reach the same store."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
           "COREMQ_DATABASE": str(tmp_path / "db.sqlite3"), "PYTHONUNBUFFERED": "1"}
    server = ServerProcess([sys.executable, "manage.py", "run_coremq", "--port", "0", "--no-web",
                            "--memcached-port", "0"], env)
    try:
        memcached_port = int(re.search(r":(\d+)", server.wait_for("CoreMQ store (memcached protocol)")).group(1))
        broker_port = int(re.search(r":(\d+)", server.wait_for("CoreMQ broker listening on")).group(1))
        client = Client(("127.0.0.1", memcached_port), default_noreply=False)
        with MessageQueue("127.0.0.1", broker_port) as mq:
            mq.store_set("shared", "from coremq")
            assert client.get("shared") == b"from coremq"
            client.set("shared", b"from memcached")
            assert mq.store_get("shared").text == "from memcached"
        client.close()
    finally:
        server.stop()
