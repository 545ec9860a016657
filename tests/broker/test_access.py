"""Authentication, permission rules and limits in the broker, over real sockets (Django's side is tested apart)."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import ssl
import time

import pytest

from coremq_broker.core.access import ANONYMOUS, FailureTracker, Principal, Rule, RulePolicy
from coremq_broker.core.config import BrokerConfig
from coremq_client.codec import encode_frame
from brokers import BrokerThread
from wire import RawClient

USERS = {
    "alice": ("wonderland", Principal("alice", 1, groups=frozenset({"readers"}))),
    "bob": ("builder", Principal("bob", 2)),
    "root": ("toor", Principal("root", 3, is_staff=True)),
}
TOKENS = {"tok-alice": Principal("alice", 1, groups=frozenset({"readers"}), token_id=7)}


async def authenticate(credentials: dict) -> Principal | None:
    """The broker's authenticator interface, answering from the tables above."""
    await asyncio.sleep(0)
    if "token" in credentials:
        return TOKENS.get(credentials["token"])
    entry = USERS.get(credentials["username"])
    return entry[1] if entry and entry[0] == credentials["password"] else None


RULES = (
    Rule("news.*", frozenset({"subscribe", "history"}), authenticated=True),
    Rule("news.*", frozenset({"publish"}), users=frozenset({"bob"})),
    Rule("secret", frozenset({"subscribe", "publish", "history"}), groups=frozenset({"readers"})),
    Rule("lobby", frozenset({"subscribe", "publish", "history"}), anonymous=True),
)


def rule_broker(**options) -> BrokerThread:
    config = BrokerConfig(port=0, shutdown_timeout=1.0, **options)
    return BrokerThread(config, access=RulePolicy(RULES, default="deny"), authenticator=authenticate)


@pytest.fixture
def secured():
    running = rule_broker()
    yield running
    running.stop()


def login(client: RawClient, **credentials) -> dict:
    return client.control({"coremq_auth": credentials})


# -- the policy as a value -------------------------------------------------

@pytest.mark.parametrize("principal,action,queue,allowed", [
    (ANONYMOUS, "subscribe", "lobby", True),
    (ANONYMOUS, "subscribe", "news.eu", False),
    (USERS["alice"][1], "subscribe", "news.eu", True),
    (USERS["alice"][1], "publish", "news.eu", False),
    (USERS["bob"][1], "publish", "news.eu", True),
    (USERS["bob"][1], "subscribe", "secret", False),
    (USERS["alice"][1], "history", "secret", True),
    (USERS["alice"][1], "subscribe", "unruled", False),
    (ANONYMOUS, "status", None, False),
    (USERS["root"][1], "status", None, True),
    (USERS["alice"][1], "admin", None, False),
    (USERS["root"][1], "admin", None, True),
])
def test_rule_policy(principal, action, queue, allowed):
    """Matching rules decide by any grant; unmatched queues follow the default; status and admin are for staff."""
    assert RulePolicy(RULES, default="deny").check(principal, action, queue) is allowed


def test_default_policies():
    """open allows all, authenticated needs a user, deny refuses, for queues no rule matches."""
    user = USERS["bob"][1]
    assert RulePolicy((), "open").check(ANONYMOUS, "publish", "q")
    assert not RulePolicy((), "authenticated").check(ANONYMOUS, "publish", "q")
    assert RulePolicy((), "authenticated").check(user, "publish", "q")
    assert not RulePolicy((), "deny").check(user, "publish", "q")
    with pytest.raises(ValueError):
        RulePolicy((), "sometimes")


def test_failure_tracker_doubles_and_blocks():
    """Attempts count before they are checked; failures double the delay up to the ceiling, then block."""
    tracker = FailureTracker(limit=4, base=0.1, ceiling=0.3)
    assert tracker.delay("a") == 0
    pending = [tracker.begin("a", "bob") for _ in range(4)]
    assert all(pending) and tracker.begin("a", "carol") is None  # four under way: the fifth is refused unchecked
    tracker.settle(pending[0], False)
    tracker.settle(pending[1], False)
    tracker.settle(pending[2], False)
    assert tracker.delay("a") == pytest.approx(0.3) and tracker.blocked("a") and not tracker.blocked("b")
    tracker.settle(pending[3], True)  # a success takes back its own attempt only
    assert tracker.delay("a") == pytest.approx(0.3) and not tracker.blocked("a")
    assert tracker.describe() == {"auth_failures": 3, "auth_refused": 1, "auth_blocked": 0}
    assert tracker.begin("a") is not None and tracker.blocked("a") and tracker.describe()["auth_blocked"] == 1


# -- over TCP ----------------------------------------------------------------

def test_anonymous_is_limited_to_what_rules_grant(secured):
    """An anonymous connection may use the lobby and is denied elsewhere, naming action and queue only."""
    client = RawClient(secured.host, secured.port)
    assert client.control({"coremq_subscribe": ["lobby"]})["response"] == "OK: Subscribe successful"
    reply = client.control({"coremq_subscribe": ["news.eu"]})
    assert reply["response"] == "ERROR: permission denied: subscribe on queue 'news.eu'"
    client.send("secret", {"x": 1})
    assert client.read()[1]["response"] == "ERROR: permission denied: publish on queue 'secret'"
    reply = client.control({"coremq_gethistory": ["secret"]})
    assert reply["response"] == "ERROR: permission denied: history on queue 'secret'" and "history" not in reply
    assert client.control({"coremq_status": True})["response"] == "ERROR: permission denied: status"


def test_password_login_grants_rules(secured):
    """After a username/password login, the user's and group's rules apply."""
    bob = RawClient(secured.host, secured.port)
    assert login(bob, username="bob", password="builder") == {
        "response": "OK: Authenticated", "user": "bob", "staff": False, "request": 1}
    alice = RawClient(secured.host, secured.port)
    assert login(alice, token="tok-alice")["user"] == "alice"
    assert alice.control({"coremq_subscribe": ["news.eu", "secret"]})["response"] == "OK: Subscribe successful"
    bob.send("news.eu", {"headline": 1})
    assert bob.read()[1]["response"] == "OK: Message sent"
    queue, message = alice.read()
    assert queue == "news.eu" and message["headline"] == 1 and message["coremq_sender"] == bob.id


def test_wrong_password_and_unknown_token_fail(secured):
    """A wrong password or an unknown token gets ERROR: authentication failed and leaves the connection anonymous."""
    client = RawClient(secured.host, secured.port)
    assert login(client, username="bob", password="nope")["response"] == "ERROR: authentication failed"
    assert login(client, token="tok-nobody")["response"] == "ERROR: authentication failed"
    assert client.control({"coremq_subscribe": ["news.eu"]})["response"].startswith("ERROR: permission denied")


def test_failed_logins_are_slowed_then_refused():
    """Repeated failures from one address wait longer each time, then that address is cut off."""
    running = rule_broker(max_auth_failures=4)
    try:
        client = RawClient(running.host, running.port)
        waits = []
        for _ in range(4):
            started = time.monotonic()
            assert login(client, username="bob", password="guess")["response"] == "ERROR: authentication failed"
            waits.append(time.monotonic() - started)
        assert waits[3] >= 0.8  # 0.1, 0.2, 0.4, 0.8 seconds
        client.send(client.id, {"coremq_auth": {"username": "bob", "password": "builder"}})
        assert client.read_until_closed() == [(client.id, {"response": "ERROR: too many failed authentications", "code": "auth_blocked"})]
    finally:
        running.stop()


def test_id_queue_of_another_connection_stays_private_after_login(secured):
    """Even staff cannot subscribe to another connection's id queue."""
    victim = RawClient(secured.host, secured.port)
    root = RawClient(secured.host, secured.port)
    login(root, username="root", password="toor")
    reply = root.control({"coremq_subscribe": [victim.id]})
    assert reply["response"].startswith("ERROR: permission denied: subscribe")


def test_changed_rules_end_live_subscriptions(secured):
    """A new policy applies to live connections: a subscription no longer allowed ends and stops receiving."""
    alice = RawClient(secured.host, secured.port)
    login(alice, token="tok-alice")
    alice.control({"coremq_subscribe": ["secret"]})
    stricter = RulePolicy(RULES[:2] + RULES[3:], default="deny")  # "secret" no longer granted
    secured.call(lambda: secured.broker.set_access(stricter))
    assert alice.read()[1]["response"] == "ERROR: permission denied: subscribe on queue 'secret' (subscription ended)"
    bob = RawClient(secured.host, secured.port)
    login(bob, username="bob", password="builder")
    secured.call(lambda: secured.broker.set_access(RulePolicy(RULES, default="deny")))
    publisher = RawClient(secured.host, secured.port)
    login(publisher, token="tok-alice")
    publisher.send("secret", {"after": 1})
    assert publisher.read()[1]["response"] == "OK: Message sent"
    alice.sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        alice.read()


def test_revoked_token_closes_its_connections(secured):
    """Revoking a token closes the connections that logged in with it."""
    alice = RawClient(secured.host, secured.port)
    login(alice, token="tok-alice")
    revoked = RulePolicy(RULES, default="deny", revoked_tokens=frozenset({7}))
    secured.call(lambda: secured.broker.set_access(revoked))
    assert alice.read_until_closed() == [(alice.id, {"response": "ERROR: credentials revoked", "code": "credentials_revoked"})]


def test_connection_limits():
    """Connections past the total limit, and past the per-user limit, are refused with clear errors."""
    running = rule_broker(max_connections=3, max_connections_per_user=1)
    try:
        first = RawClient(running.host, running.port)
        second = RawClient(running.host, running.port)
        assert login(first, username="bob", password="builder")["response"] == "OK: Authenticated"
        assert login(second, username="bob", password="builder")["response"] == \
            "ERROR: too many connections for user 'bob': limit is 1"
        third = RawClient(running.host, running.port)
        refused = RawClient(running.host, running.port, read_welcome=False)
        frames = refused.read_until_closed()
        assert frames[0][1] == {"response": "ERROR: too many connections: limit is 3", "code": "too_many_connections"}
        assert running.call(lambda: len(running.broker.registry.connections)) == 3
        third.close()
    finally:
        running.stop()


def test_publish_rate_limit():
    """Publishing faster than max_publish_rate gets ERROR: publish rate limit exceeded."""
    running = BrokerThread(BrokerConfig(port=0, max_publish_rate=50))
    try:
        client = RawClient(running.host, running.port)
        # In one write: the bucket holds 50, and next to nothing refills while they are read.
        client.send_raw(b"".join(encode_frame("q", json.dumps({"n": n}).encode()) for n in range(80)))
        replies = [client.read()[1]["response"] for _ in range(80)]
        assert 50 <= replies.count("OK: Message sent") <= 52  # what refills while they arrive
        assert "ERROR: publish rate limit exceeded: 50 per second" in replies
    finally:
        running.stop()


def self_signed(tmp_path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def test_tls_round_trip(tmp_path):
    """With a certificate and key configured the listener speaks TLS, and a verifying client gets its welcome and replies."""
    cert, key = self_signed(tmp_path)
    running = BrokerThread(BrokerConfig(port=0, tls_cert=cert, tls_key=key))
    try:
        context = ssl.create_default_context(cafile=cert)
        raw = socket.create_connection((running.host, running.port), timeout=5)
        client = RawClient.__new__(RawClient)
        client.sock = context.wrap_socket(raw, server_hostname="localhost")
        from coremq_client.codec import FrameParser
        client.parser, client.pending = FrameParser(), []
        client.id = client.read_frame().queue
        assert client.control({"coremq_subscribe": ["tls"]})["response"] == "OK: Subscribe successful"
        plain = socket.create_connection((running.host, running.port), timeout=5)
        plain.sendall(b"+7 q {}\r\n")
        assert not plain.recv(100).startswith(b"+")  # no plaintext frames from a TLS listener
    finally:
        running.stop()


def test_point_to_point_follows_the_publish_rules():
    """Sending to another connection's id queue needs a publish grant matching it; one's own is always allowed."""
    uuid_rule = Rule("*-*-*-*-*", frozenset({"publish"}), users=frozenset({"bob"}))
    running = BrokerThread(BrokerConfig(port=0), access=RulePolicy(RULES + (uuid_rule,), default="deny"),
                           authenticator=authenticate)
    try:
        target = RawClient(running.host, running.port)
        anonymous = RawClient(running.host, running.port)
        anonymous.send(target.id, {"hi": 1})
        assert anonymous.read()[1]["response"] == f"ERROR: permission denied: publish on queue '{target.id}'"
        anonymous.send(anonymous.id, {"note to self": 1})
        assert anonymous.read()[1]["response"] == "OK: Message sent"
        bob = RawClient(running.host, running.port)
        login(bob, username="bob", password="builder")
        bob.send(target.id, {"hi": 2})
        assert bob.read()[1]["response"] == "OK: Message sent"
        assert target.read()[1]["hi"] == 2
    finally:
        running.stop()


def test_requests_pipelined_after_a_login_wait_for_it(secured):
    """Frames sent in the same write as a login are carried out after it, as the logged-in user."""

    alice = RawClient(secured.host, secured.port)
    alice.send_raw(encode_frame(alice.id, b'{"coremq_auth": {"token": "tok-alice"}}')
                   + encode_frame(alice.id, b'{"coremq_subscribe": ["secret"]}'))
    assert alice.read()[1]["response"] == "OK: Authenticated"
    assert alice.read()[1] == {"response": "OK: Subscribe successful", "request": 2}
    # Each frame counts once, the held one when it is carried out.
    assert secured.call(lambda: secured.broker.registry.connections[alice.id].messages_in) == 2
