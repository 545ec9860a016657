"""The ``@connections`` rule for direct messages (connection ids and their sub-addresses, no queue name),
and the login throttle of a web process that does not run the broker.

The broker runs on the test's loop with ``run_coremq``'s pieces and follows
the admin's tables (the ``secured`` fixture), under ``DEFAULT_POLICY = "deny"``.
"""

from __future__ import annotations

import asyncio
import importlib

import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.test import Client

from coremq_broker.core.access import CONNECTIONS, Rule
from coremq_broker.auth.authenticator import login_throttle
from coremq_broker.models import PermissionRule
from coremq_client.errors import PermissionDenied
from security_world import Secured, secured, until  # noqa: F401  (secured: a fixture)
from test_security_websocket import Open, ask, open_socket, remote_broker  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

#: A queue name with four hyphens, in a group's namespace: what ``*-*-*-*-*`` also matched.
INVOICES = "billing.invoices-2026-12-01-eu"


def direct_rules() -> None:
    """``billing.*`` for the group billing (nobody here), and direct messages for the group readers (alice)."""
    PermissionRule.objects.create(pattern="billing.*", publish=True, subscribe=True, history=True) \
        .groups.add(Group.objects.create(name="billing"))
    PermissionRule.objects.create(pattern=CONNECTIONS, publish=True, note="direct messages") \
        .groups.add(Group.objects.get(name="readers"))


async def with_direct_rules(secured: Secured) -> None:
    await sync_to_async(direct_rules)()
    await until(lambda: any(rule.pattern == CONNECTIONS for rule in secured.broker.access.rules))


async def test_the_old_glob_matched_queue_names_and_connections_does_not() -> None:
    """``*-*-*-*-*`` matches a queue name with four hyphens; ``@connections`` only the form of a connection id."""
    glob, direct = Rule("*-*-*-*-*", frozenset({"publish"})), Rule(CONNECTIONS, frozenset({"publish"}))
    connection_id = "0b7e8c3a-5d1f-4c2e-9a6b-3f8d2e1c4b5a"
    assert glob.matches(INVOICES) and not direct.matches(INVOICES)
    assert direct.matches(connection_id) and direct.matches(f"{connection_id}/7")
    assert not direct.matches(CONNECTIONS) and not direct.matches("a-b-c-d-e")
    assert not direct.matches(connection_id.upper()) and not direct.matches(f"x{connection_id}")


async def test_connections_rule_grants_direct_messages_over_tcp(secured: Secured) -> None:
    """alice may message bob's connection id, not billing.invoices-2026-12-01-eu; bob, outside the rule, may not."""
    await with_direct_rules(secured)
    alice, bob = await secured.connect("alice"), await secured.connect("bob")
    await alice.publish(bob.connection_id, {"hello": "bob"})
    queue, message = await asyncio.wait_for(bob.get_message(), 5)
    assert (queue, message["hello"], message["coremq_sender"]) == (bob.connection_id, "bob", alice.connection_id)
    with pytest.raises(PermissionDenied) as denied:
        await alice.publish(INVOICES, {"amount": 1})
    assert str(denied.value) == f"permission denied: publish on queue {INVOICES!r}"
    with pytest.raises(PermissionDenied):
        await bob.publish(alice.connection_id, {"hello": "alice"})


async def test_connections_rule_grants_direct_messages_from_browsers(secured: Secured, open_socket: Open) -> None:
    """The bridge applies the same rule to a browser: a TCP client's id is granted, the invoices queue is not."""
    await with_direct_rules(secured)
    bob = await secured.connect("bob")
    socket, _ = await open_socket("alice")
    sent = await ask(socket, {"action": "publish", "queue": bob.connection_id, "message": {"from": "browser"}})
    assert sent["type"] == "published", sent
    queue, message = await asyncio.wait_for(bob.get_message(), 5)
    assert (queue, message["from"]) == (bob.connection_id, "browser")
    refused = await ask(socket, {"action": "publish", "queue": INVOICES, "message": {"amount": 1}})
    assert refused["error"] == f"permission denied: publish on queue {INVOICES!r}"


async def test_rule_patterns_starting_with_at_are_reserved() -> None:
    """The model accepts @connections and refuses other @ patterns; the admin lists the rule as "connection ids"."""
    def check() -> str:
        PermissionRule(pattern=CONNECTIONS, publish=True).full_clean()
        with pytest.raises(ValidationError, match="reserved"):
            PermissionRule(pattern="@conections", publish=True).full_clean()
        PermissionRule.objects.create(pattern=CONNECTIONS, publish=True, authenticated=True)
        client = Client()
        client.force_login(User.objects.create_superuser("admin", password="admin-pw-1"))
        return client.get("/admin/coremq_broker/permissionrule/").content.decode()

    page = await sync_to_async(check)()
    assert "@connections" in page and "connection ids" in page


async def test_migration_turns_the_documented_glob_into_connections() -> None:
    """Migration 0006 makes the *-*-*-*-* rules of the earlier docs @connections rules, and back."""
    migration = importlib.import_module("coremq_broker.migrations.0006_permissionrule_connections")

    def migrate() -> list[str]:
        rule = PermissionRule.objects.create(pattern="*-*-*-*-*", publish=True, authenticated=True)
        other = PermissionRule.objects.create(pattern="a-*", publish=True)
        migration.glob_to_connections(apps, None)
        forward = [PermissionRule.objects.get(pk=rule.pk).pattern, PermissionRule.objects.get(pk=other.pk).pattern]
        migration.connections_to_glob(apps, None)
        return forward + [PermissionRule.objects.get(pk=rule.pk).pattern]

    assert await sync_to_async(migrate)() == [CONNECTIONS, "a-*", "*-*-*-*-*"]


# -- a web process of its own: the WebSocket logins' throttle is its own ----------------------------


async def test_a_separate_web_process_throttles_its_browsers_logins(remote_broker: int, open_socket: Open,
                                                                    settings) -> None:
    """Without the broker in-process, browsers' token logins go through a throttle of the web process's own."""
    settings.COREMQ = {**settings.COREMQ, "MAX_AUTH_FAILURES": 3}
    sockets = [(await open_socket())[0] for _ in range(5)]
    answers = await asyncio.gather(*(ask(socket, {"action": "auth", "token": "cmq_" + "x" * 43})
                                     for socket in sockets))
    errors = sorted(answer["error"] for answer in answers)
    assert errors == ["authentication failed"] * 3 + ["too many failed authentications"] * 2
    assert login_throttle().describe() == {"auth_failures": 3, "auth_refused": 2, "auth_blocked": 1}
