"""run_coremq as a real process: every limit from settings.COREMQ with its error, and TLS from flags."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from coremq_client.codec import encode_frame
from coremq_client.sync_client import MessageQueue
from security_world import World, migrated_world, run_coremq, tls_contexts
from wire import RawClient

pytestmark = pytest.mark.timeout(120)

LIMITS = {
    "DEFAULT_POLICY": "authenticated", "MAX_CONNECTIONS": 6, "MAX_CONNECTIONS_PER_USER": 2,
    "MAX_SUBSCRIPTIONS": 3, "MAX_PUBLISH_RATE": 20, "MAX_FRAME_SIZE": 2048, "MAX_AUTH_FAILURES": 3,
}


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, World]:
    path = tmp_path_factory.mktemp("security") / "db.sqlite3"
    return path, migrated_world(path)


@pytest.fixture
def limited(database) -> Iterator[int]:
    """A run_coremq --no-web with the small LIMITS; yields its port."""
    server, port = run_coremq(database[0], coremq=LIMITS)
    try:
        yield port
    finally:
        server.stop()


def login(client: RawClient, user: str = "alice") -> dict:
    return client.control({"coremq_auth": {"username": user, "password": f"{user}-pw-1"}})


def test_connection_limits(limited: int) -> None:
    """MAX_CONNECTIONS_PER_USER refuses a user's third login; MAX_CONNECTIONS refuses the seventh connection."""
    clients = [RawClient("127.0.0.1", limited) for _ in range(6)]
    assert [login(client)["response"] for client in clients[:3]] == [
        "OK: Authenticated", "OK: Authenticated", "ERROR: too many connections for user 'alice': limit is 2"]
    refused = RawClient("127.0.0.1", limited, read_welcome=False)
    assert refused.read_until_closed()[0][1] == {"response": "ERROR: too many connections: limit is 6", "code": "too_many_connections"}


def test_subscription_and_frame_limits(limited: int) -> None:
    """MAX_SUBSCRIPTIONS and MAX_FRAME_SIZE answer with errors naming the limit; the connection goes on."""
    client = RawClient("127.0.0.1", limited)
    login(client)
    assert client.control({"coremq_subscribe": ["news.a", "news.b", "news.c"]})["response"] == "OK: Subscribe successful"
    assert client.control({"coremq_subscribe": ["news.d"]})["response"] == \
        "ERROR: too many subscriptions: limit is 3 per connection"
    body = json.dumps({"x": "y" * 3000}).encode()
    client.send_raw(encode_frame("news.a", body))
    size = len(b"news.a ") + len(body)
    assert client.read()[1]["response"] == f"ERROR: frame too large: {size} bytes, limit is 2048"
    assert client.control({"coremq_subscribe": ["news.a"]})["response"] == "OK: Subscribe successful"


def test_publish_rate_limit(limited: int) -> None:
    """MAX_PUBLISH_RATE: publishes past 20 in a second are refused with an error naming the limit."""
    client = RawClient("127.0.0.1", limited)
    login(client, "bob")
    client.send_raw(b"".join(encode_frame("news.rate", json.dumps({"n": n}).encode()) for n in range(40)))
    replies = [client.read()[1]["response"] for _ in range(40)]
    assert 20 <= replies.count("OK: Message sent") <= 21  # a bucket of 20; next to nothing refills meanwhile
    assert "ERROR: publish rate limit exceeded: 20 per second" in replies


def test_anonymous_clients_follow_the_default_policy(limited: int) -> None:
    """Under DEFAULT_POLICY "authenticated" an anonymous client is denied where no rule opens the queue."""
    client = RawClient("127.0.0.1", limited)
    assert client.control({"coremq_subscribe": ["unruled"]})["response"] == \
        "ERROR: permission denied: subscribe on queue 'unruled'"
    assert client.control({"coremq_subscribe": ["lobby"]})["response"] == "OK: Subscribe successful"


def test_failed_logins_are_slowed_then_cut_off(limited: int) -> None:
    """MAX_AUTH_FAILURES: each wrong password waits longer for its answer; past the limit the address is cut off."""
    client = RawClient("127.0.0.1", limited)
    waits = []
    for _ in range(3):
        started = time.monotonic()
        assert client.control({"coremq_auth": {"username": "alice", "password": "guess"}})["response"] == \
            "ERROR: authentication failed"
        waits.append(time.monotonic() - started)
    assert waits[0] < waits[1] < waits[2] and waits[2] >= 0.4
    client.send(client.id, {"coremq_auth": {"username": "alice", "password": "alice-pw-1"}})
    assert client.read_until_closed() == [(client.id, {"response": "ERROR: too many failed authentications", "code": "auth_blocked"})]


def test_tls_round_trip(database, tmp_path: Path) -> None:
    """--tls-cert/--tls-key: a client with ssl= and a token publishes and receives over TLS; plain TCP gets nothing."""
    _, client_context = tls_contexts(tmp_path)
    server, port = run_coremq(database[0], "--tls-cert", str(tmp_path / "cert.pem"), "--tls-key",
                              str(tmp_path / "key.pem"), coremq={"DEFAULT_POLICY": "deny"})
    try:
        assert "(TLS)" in "".join(server.output)
        token = database[1].alice_token
        with MessageQueue("127.0.0.1", port, ssl=client_context, token=token, queues=["secret"]) as reader, \
                MessageQueue("127.0.0.1", port, ssl=client_context, token=token) as writer:
            assert reader.user == "alice"
            writer.publish("secret", {"over": "tls"})
            queue, message = reader.get_message(timeout=5)
            assert (queue, message["over"]) == ("secret", "tls")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
            plain.sendall(b"+7 q {}\r\n")
            assert not plain.recv(100).startswith(b"+")
    finally:
        server.stop()
