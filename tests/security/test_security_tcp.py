"""Authentication and permission rules over TCP, against Django's users, groups, tokens and rules.

The broker runs on the test's event loop with ``run_coremq``'s pieces (the
``secured`` fixture of security_world).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.utils import timezone

from coremq_broker.models import ApiToken, PermissionRule
from coremq_client import AsyncMessageQueue
from coremq_client.errors import AuthenticationFailed, PermissionDenied
from security_world import CASES, PASSWORDS, Secured, secured, until  # noqa: F401  (secured: a fixture)
from wire import RawClient

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]


async def attempt(client: AsyncMessageQueue, action: str, queue: str) -> None:
    if action == "subscribe":
        await client.subscribe(queue)
    elif action == "publish":
        await client.publish(queue, {"x": 1})
    else:
        await client.history(queue)


@pytest.mark.parametrize("who,action,queue,allowed", CASES)
async def test_rules_over_tcp(secured: Secured, who: str, action: str, queue: str, allowed: bool) -> None:
    """Each rule allows what it grants, to whom it grants it, and denies the rest naming action and queue."""
    client = await secured.connect(who)
    if allowed:
        await attempt(client, action, queue)
    else:
        with pytest.raises(PermissionDenied) as denied:
            await attempt(client, action, queue)
        assert str(denied.value) == f"permission denied: {action} on queue {queue!r}"


async def test_token_login_carries_the_users_groups(secured: Secured) -> None:
    """A token logs in as its user, with the user's groups; its last use is noted and the user shows in status."""
    client = await secured.connect("alice", token=secured.world.alice_token)
    assert client.user == "alice"
    await client.subscribe("secret")
    token = await sync_to_async(ApiToken.objects.get)(pk=secured.world.alice_token_id)
    assert token.last_used is not None
    listed = secured.broker.status(connections=True)["connection_list"]
    assert [c["user"] for c in listed if c["id"] == client.connection_id] == ["alice"]


@pytest.mark.parametrize("credentials", [
    pytest.param({"token": "cmq_" + "x" * 43}, id="wrong token"),
    pytest.param({"token": "not-even-a-token"}, id="malformed token"),
    pytest.param("expired_token", id="expired token"),
    pytest.param("revoked_token", id="revoked token"),
    pytest.param({"username": "alice", "password": "wrong"}, id="wrong password"),
    pytest.param({"username": "nobody", "password": "x"}, id="unknown user"),
    pytest.param({"username": "inactive", "password": "inactive-pw"}, id="inactive user"),
])
async def test_bad_credentials_are_refused(secured: Secured, credentials: Any) -> None:
    """A wrong, expired or revoked token, a wrong password or an inactive user: AuthenticationFailed, counted."""
    await sync_to_async(User.objects.create_user)("inactive", password="inactive-pw", is_active=False)
    if isinstance(credentials, str):
        credentials = {"token": getattr(secured.world, credentials)}
    with pytest.raises(AuthenticationFailed):
        await secured.connect("anonymous", **credentials)
    assert secured.broker.auth_failures.failures == 1


async def test_a_denial_reveals_nothing_and_is_logged_and_counted(secured: Secured, caplog) -> None:
    """A refused history request carries no messages; the denial is logged and counted for the status page."""
    alice = await secured.connect("alice")
    await alice.publish("secret", {"the": "plans"})
    caplog.set_level(logging.WARNING, logger="coremq.broker")
    bob = await asyncio.to_thread(RawClient, secured.broker.host, secured.broker.port)
    await asyncio.to_thread(bob.control, {"coremq_auth": {"username": "bob", "password": PASSWORDS["bob"]}})
    reply = await asyncio.to_thread(bob.control, {"coremq_gethistory": ["secret"]})
    assert reply == {"response": "ERROR: permission denied: history on queue 'secret'", "code": "permission_denied", "request": 2, "queue": bob.id}
    assert secured.broker.status()["denials"] == 1
    assert "permission denied: history on queue 'secret'" in caplog.text
    bob.close()


async def test_another_connections_id_queue_is_private(secured: Secured) -> None:
    """Nobody, staff included, may subscribe to or read another connection's id queue; sending to it follows
    the publish rules (none matches here, and the default is deny), and one's own is one's own."""
    alice, root, stranger = await secured.connect("alice"), await secured.connect("root"), await secured.connect()
    for action in ("subscribe", "history"):
        with pytest.raises(PermissionDenied, match=f"{action} on queue '{alice.connection_id}' "
                                                   r"\(another connection's private queue\)"):
            await attempt(root, action, alice.connection_id)
    with pytest.raises(PermissionDenied, match=f"publish on queue '{alice.connection_id}'"):
        await stranger.publish(alice.connection_id, {"direct": 1})
    assert (await alice.publish(alice.connection_id, {"direct": 2}))["response"] == "OK: Message sent"


async def test_status_and_admin_are_for_staff(secured: Secured) -> None:
    """Status and admin requests are refused to anonymous and ordinary users, and answered for staff."""
    for client in (await secured.connect(), await secured.connect("bob")):
        with pytest.raises(PermissionDenied, match="^permission denied: status$"):
            await client.status()
        with pytest.raises(PermissionDenied, match="^permission denied: admin$"):
            await client.admin("purge", queue="lobby")
    root = await secured.connect("root")
    assert (await root.status())["response"] == "OK: Status"
    assert (await root.admin("purge", queue="lobby"))["response"] == "OK: Purged"


async def test_a_relay_acts_anywhere(secured: Secured) -> None:
    """A user with the relay permission (a web process's bridge) may publish, subscribe and read anywhere."""
    relay = await secured.connect("relay", token=secured.world.relay_token)
    for action in ("publish", "subscribe", "history"):
        for queue in ("unruled", "locked", "secret"):
            await attempt(relay, action, queue)


async def test_revoking_a_token_in_the_admin_closes_its_connections_within_a_second(secured: Secured) -> None:
    """The admin's revoke action closes the live connections of the token within a second."""
    from django.test import Client

    alice = await secured.connect("alice", token=secured.world.alice_token)
    bystander = await secured.connect("alice")  # the same user by password stays

    def revoke_in_the_admin() -> None:
        admin = Client()
        admin.force_login(User.objects.create_superuser("admin", password="admin-pw"))
        response = admin.post("/admin/coremq_broker/apitoken/", {
            "action": "revoke", "_selected_action": [secured.world.alice_token_id]})
        assert response.status_code == 302

    await sync_to_async(revoke_in_the_admin)()
    assert await until(lambda: secured.connection_of(alice) is None) < 1.0
    assert secured.connection_of(bystander) is not None
    await until(lambda: alice.closed)
    assert [str(error) for error in alice.errors] == ["credentials revoked"]
    with pytest.raises(AuthenticationFailed):
        await secured.connect("alice", token=secured.world.alice_token)


async def test_an_expiring_token_loses_its_connections_when_it_expires(secured: Secured) -> None:
    """A token's connections are closed within a second of its expiry, with no change to any row."""
    alice = await sync_to_async(User.objects.get)(username="alice")
    expires = timezone.now() + datetime.timedelta(seconds=1.5)
    _, secret = await sync_to_async(ApiToken.objects.issue)(alice, "short-lived", expires=expires)
    client = await secured.connect("alice", token=secret)
    await until(lambda: timezone.now() >= expires)
    assert await until(lambda: secured.connection_of(client) is None) < 1.0


async def test_a_deactivated_user_loses_connections(secured: Secured) -> None:
    """Deactivating a user in the admin closes that user's connections."""
    bob = await secured.connect("bob")

    def deactivate() -> None:
        user = User.objects.get(username="bob")
        user.is_active = False
        user.save()

    await sync_to_async(deactivate)()
    assert await until(lambda: secured.connection_of(bob) is None) < 1.0


async def test_a_rule_change_ends_a_live_subscription(secured: Secured) -> None:
    """A rule that no longer grants a subscription ends it within a second, with an error, and nothing more arrives."""
    errors: list[Exception] = []
    alice = await secured.connect("alice", on_error=errors.append)
    await alice.subscribe("secret")
    relay = await secured.connect("relay", token=secured.world.relay_token)

    await sync_to_async(lambda: PermissionRule.objects.get(pattern="secret").groups.clear())()
    assert await until(lambda: "secret" not in secured.connection_of(alice).subscriptions) < 1.0
    await until(lambda: bool(errors))
    assert str(errors[0]) == "permission denied: subscribe on queue 'secret' (subscription ended)"
    await relay.publish("secret", {"after": "the change"})
    await relay.publish("lobby", {"marker": 1})  # alice is not subscribed to it: nothing should come at all
    assert await alice.receive(timeout=0.3) is None
    with pytest.raises(PermissionDenied):
        await alice.subscribe("secret")


async def test_a_new_rule_grants_at_once(secured: Secured) -> None:
    """A rule added in the admin lets a live connection do what it could not before."""
    bob = await secured.connect("bob")
    with pytest.raises(PermissionDenied):
        await bob.subscribe("reports")
    await sync_to_async(PermissionRule.objects.create)(pattern="rep*", subscribe=True, authenticated=True)
    started = time.monotonic()
    while True:
        try:
            await bob.subscribe("reports")
            break
        except PermissionDenied:
            assert time.monotonic() - started < 1.0
            await asyncio.sleep(0.05)


async def test_django_code_publishes_with_the_client_token(secured: Secured, settings) -> None:
    """apublish() logs in with COREMQ['CLIENT_TOKEN'] (a relay's): it may publish where anonymous may not."""
    from coremq_broker.publishing import apublish

    address = {"HOST": secured.broker.host, "PORT": secured.broker.port}
    settings.COREMQ = {**settings.COREMQ, **address}
    with pytest.raises(PermissionDenied):
        await apublish("orders", {"id": 1})
    settings.COREMQ = {**settings.COREMQ, "CLIENT_TOKEN": secured.world.relay_token}
    reply = await apublish("orders", {"id": 2})
    assert reply is not None and reply["id"] == 1
