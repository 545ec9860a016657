"""Logging in: both clients against a broker with an authenticator and rules, over real sockets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Iterator

import pytest

from clients import PATIENCE, BrokerThread, client_factory  # noqa: F401  (a fixture)
from coremq_broker.core.access import Principal, Rule, RulePolicy
from coremq_broker.core.config import BrokerConfig
from coremq_client import AuthenticationFailed, MessageQueue, PermissionDenied, ServerError

pytestmark = pytest.mark.timeout(60)


class Directory:
    """Users and tokens the test broker accepts; tests change them while it runs."""

    def __init__(self) -> None:
        self.users = {"bob": ("builder", Principal("bob", 2)), "root": ("toor", Principal("root", 3, is_staff=True))}
        self.tokens = {"tok-alice": Principal("alice", 1, token_id=7)}
        self.attempts: list[dict] = []
        self.changed = threading.Event()

    async def authenticate(self, credentials: dict) -> Principal | None:
        """The broker's authenticator interface."""
        await asyncio.sleep(0)
        self.attempts.append(dict(credentials))
        self.changed.set()
        if "token" in credentials:
            return self.tokens.get(credentials["token"])
        entry = self.users.get(credentials["username"])
        return entry[1] if entry and entry[0] == credentials["password"] else None


#: Anonymous connections may use "lobby"; every other queue needs a login.
RULES = (Rule("lobby", frozenset({"subscribe", "publish", "history"}), anonymous=True),)


@pytest.fixture
def directory() -> Directory:
    return Directory()


@pytest.fixture
def secured(directory: Directory) -> Iterator[BrokerThread]:
    broker = BrokerThread(BrokerConfig(port=0, shutdown_timeout=2.0),
                          access=RulePolicy(RULES, default="authenticated"), authenticator=directory.authenticate)
    yield broker
    broker.stop()


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for ``condition`` (a guard against hanging, not a timing assertion)."""
    pause = threading.Event()
    for _ in range(int(PATIENCE / 0.01)):
        if condition():
            return
        pause.wait(0.01)
    raise AssertionError("the condition never became true")


def reconnected(client: Any, old_id: str | None) -> None:
    wait_until(lambda: client.connected and client.connection_id != old_id)
    client.publish("lobby", {"sync": True})  # answered after the login and the replay on this connection


def test_token_login(client_factory, secured):
    """With token= the client logs in before subscribing, so a queue that needs a login can be subscribed at once."""
    client = client_factory(secured)(token="tok-alice", queues=["private"])
    assert client.user == "alice"
    publisher = client_factory(secured)(username="bob", password="builder")
    assert publisher.user == "bob"
    publisher.publish("private", {"n": 1})
    assert client.receive(PATIENCE).message["n"] == 1


def test_anonymous_client_has_no_user(client_factory, secured):
    """Without credentials the client is anonymous: user is None and rules for logged-in users refuse it."""
    client = client_factory(secured)(queues=["lobby"])
    assert client.user is None
    with pytest.raises(PermissionDenied):
        client.subscribe("private")


def test_refused_credentials_raise_and_are_tried_once(client_factory, secured, directory):
    """A wrong password makes connect() raise AuthenticationFailed (a ServerError naming the request), with no retry."""
    client = client_factory(secured)(username="bob", password="wrong", connect=False)
    with pytest.raises(AuthenticationFailed) as raised:
        client.connect()
    assert isinstance(raised.value, ServerError) and raised.value.reason == "authentication failed"
    assert raised.value.request == 1
    assert len(directory.attempts) == 1
    client.set_credentials(username="bob", password="builder")
    client.connect()
    assert client.user == "bob" and len(directory.attempts) == 2


def test_login_again_after_restart(client_factory, secured, directory):
    """After broker.restart() the client logs in again before it resubscribes, and keeps receiving."""
    client = client_factory(secured)(token="tok-alice", queues=["private"])
    old = client.connection_id
    secured.restart()
    publisher = client_factory(secured)(username="bob", password="builder")
    reconnected(client, old)
    assert client.user == "alice"
    assert [a for a in directory.attempts if "token" in a] == [{"token": "tok-alice"}] * 2
    publisher.publish("private", {"n": 2})
    assert client.receive(PATIENCE).message["n"] == 2


def test_refused_on_reconnect_waits_for_new_credentials(client_factory, secured, directory):
    """Credentials refused after a reconnect are reported and not retried; requests raise; set_credentials resumes."""
    errors: list[Exception] = []
    client = client_factory(secured)(token="tok-alice", queues=["private"], on_error=errors.append)
    del directory.tokens["tok-alice"]
    old = client.connection_id
    secured.restart()
    wait_until(lambda: any(isinstance(e, AuthenticationFailed) for e in errors))
    with pytest.raises(AuthenticationFailed):
        client.status()
    # A reconnect loop would try again within its backoff (0.01 s here); many round trips later it has not.
    other = client_factory(secured)(queues=["lobby"])
    for n in range(50):
        other.publish("lobby", {"n": n})
    assert [a for a in directory.attempts if "token" in a] == [{"token": "tok-alice"}] * 2
    client.set_credentials(username="bob", password="builder")
    reconnected(client, old)
    assert client.user == "bob"
    other_publisher = client_factory(secured)(username="root", password="toor")
    other_publisher.publish("private", {"n": 3})
    assert client.receive(PATIENCE).message["n"] == 3


def test_credentials_are_checked_when_the_client_is_made():
    """A token with a username, or a username without a password, is refused before any connection."""
    with pytest.raises(ValueError):
        MessageQueue(token="t", username="u", password="p")
    with pytest.raises(ValueError):
        MessageQueue(username="u")
    with pytest.raises(ValueError):
        MessageQueue(password="p")
