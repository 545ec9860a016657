"""Django's side of security: tokens in the admin, the policy snapshot, settings and their checks."""

from __future__ import annotations

import datetime
import hashlib
import re
import ssl

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client, override_settings
from django.utils import timezone

from coremq_broker import conf
from coremq_broker.core.access import ANONYMOUS, Principal
from coremq_broker.auth.authenticator import authenticate_now, principal_for
from coremq_broker.auth.policy import BRIDGE, SitePolicy, access_watcher, load_policy
from coremq_broker.checks import check_access, check_settings
from coremq_broker.models import ApiToken, PermissionRule
from coremq_broker.publishing import client_options
from security_world import FAST_HASHERS, make_world

pytestmark = pytest.mark.django_db

ADD_URL = "/admin/coremq_broker/apitoken/add/"
LIST_URL = "/admin/coremq_broker/apitoken/"


@pytest.fixture
def world(settings):
    settings.PASSWORD_HASHERS = FAST_HASHERS
    return make_world()


@pytest.fixture
def admin_client(settings) -> Client:
    settings.PASSWORD_HASHERS = FAST_HASHERS
    client = Client()
    client.force_login(User.objects.create_superuser("admin", password="admin-pw"))
    return client


def test_token_is_shown_once_and_only_its_hash_is_stored(admin_client: Client) -> None:
    """Saving a new token in the admin shows it once; the database keeps its prefix and SHA-256 only."""
    owner = User.objects.create_user("svc")
    response = admin_client.post(ADD_URL, {"user": owner.pk, "name": "billing", "expires": ""}, follow=True)
    assert response.status_code == 200
    shown = re.findall(r'<code class="coremq-token">(cmq_[\w-]+)</code>', response.content.decode())
    assert len(shown) == 1
    token = shown[0]
    row = ApiToken.objects.get()
    assert (row.user, row.name, row.prefix) == (owner, "billing", token[:12])
    assert row.key_hash == hashlib.sha256(token.encode()).hexdigest()
    stored = [str(value) for value in ApiToken.objects.values().get().values()]
    assert not any(token in value for value in stored)
    for page in (LIST_URL, f"{LIST_URL}{row.pk}/change/"):
        assert token not in admin_client.get(page).content.decode()  # never again
    assert authenticate_now({"token": token}) == Principal("svc", owner.pk, token_id=row.pk)


def test_revoke_action_and_deleting_only_dead_tokens(admin_client: Client, world) -> None:
    """The revoke action stamps the selected tokens; only revoked or expired tokens may be deleted."""
    live = ApiToken.objects.get(name="alice's script")
    admin_client.post(LIST_URL, {"action": "revoke", "_selected_action": [live.pk]})
    live.refresh_from_db()
    assert live.revoked is not None and live.state == "revoked"
    fresh, _ = ApiToken.objects.issue(User.objects.get(username="bob"), "fresh")
    assert admin_client.get(f"{LIST_URL}{fresh.pk}/delete/").status_code == 403
    assert admin_client.get(f"{LIST_URL}{live.pk}/delete/").status_code == 200


def test_principal_of_a_user() -> None:
    """A Django user becomes a Principal with its id, staff flag and group names; no user is anonymous."""
    from django.contrib.auth.models import AnonymousUser, Group

    user = User.objects.create_user("ada", is_staff=True)
    user.groups.add(Group.objects.create(name="ops"), Group.objects.create(name="dev"))
    assert principal_for(user) == Principal("ada", user.pk, True, frozenset({"ops", "dev"}))
    assert principal_for(AnonymousUser()) is ANONYMOUS


def test_policy_snapshot_from_the_tables(world, settings) -> None:
    """Rules, the default, relays, revoked and expired tokens and active users make one comparable snapshot."""
    settings.COREMQ = {**settings.COREMQ, "DEFAULT_POLICY": "authenticated"}
    policy = load_policy()
    assert isinstance(policy, SitePolicy) and policy.default == "authenticated"
    assert sorted(rule.pattern for rule in policy.rules) == ["lobby", "locked", "news.*", "news.*", "secret"]
    expired, revoked = (ApiToken.objects.get(name=name).pk for name in ("old", "leaked"))
    assert policy.revoked_tokens == {expired, revoked}
    assert policy.relays == {User.objects.get(username="relay").pk}
    assert load_policy() == policy  # nothing changed: equal, so the watcher does nothing

    soon = ApiToken.objects.get(name="alice's script")
    soon.expires = timezone.now() - datetime.timedelta(seconds=1)  # as if time had passed
    soon.save()
    assert load_policy().revoked_tokens == {expired, revoked, soon.pk}


def test_a_user_made_after_the_snapshot_is_not_taken_for_a_removed_one(world) -> None:
    """Until the next poll a new user is not in the snapshot's active users: it may log in; a deleted one may not."""
    policy = load_policy()
    newcomer = User.objects.create_user("newcomer", password="newcomer-pw-1")
    assert not policy.is_revoked(Principal(username="newcomer", user_id=newcomer.pk))
    gone = User.objects.get(username="relay")
    gone_id = gone.pk
    gone.delete()
    assert policy.is_revoked(Principal(username="relay", user_id=gone_id)) is False  # this snapshot still had it
    assert load_policy().is_revoked(Principal(username="relay", user_id=gone_id))
    inactive = User.objects.get(pk=newcomer.pk)
    inactive.is_active = False
    inactive.save()
    assert load_policy().is_revoked(Principal(username="newcomer", user_id=newcomer.pk))


def test_relays_and_the_in_process_bridge_pass_every_rule(world) -> None:
    """The relay user and the in-process bridge may do anything on queues; others still follow the rules."""
    policy = load_policy()
    relay = authenticate_now({"username": "relay", "password": "relay-pw-1"})
    for principal in (relay, BRIDGE):
        assert all(policy.check(principal, action, "locked") for action in ("publish", "subscribe", "history"))
    lookalike = Principal(username=BRIDGE.username)  # a user who took the bridge's name is nobody special
    assert not policy.check(lookalike, "subscribe", "locked")
    assert not policy.check(BRIDGE, "admin", None)


def test_watcher_keeps_the_default_alone_while_tables_cannot_be_read(settings, monkeypatch, world) -> None:
    """Before the tables can be read the default policy alone applies; the next good read replaces it."""
    from coremq_broker.auth import policy as policy_module

    def unreadable() -> SitePolicy:
        raise RuntimeError("no such table: coremq_broker_permissionrule")

    settings.COREMQ = {**settings.COREMQ, "DEFAULT_POLICY": "deny"}
    monkeypatch.setattr(policy_module, "load_policy", unreadable)
    watcher = access_watcher()
    assert watcher.snapshot == SitePolicy(default="deny")
    monkeypatch.setattr(watcher, "_load", load_policy)
    assert watcher.check() is True and len(watcher.snapshot.rules) == 5


def test_pattern_is_validated_like_a_queue_name() -> None:
    """A rule's pattern with whitespace is refused by the admin form's validation."""
    with pytest.raises(ValidationError):
        PermissionRule(pattern="two words").full_clean()
    PermissionRule(pattern="orders.[0-9]*", publish=True).full_clean()


# -- settings and system checks ------------------------------------------------------

@pytest.mark.parametrize("debug,policy,warned", [
    (False, "open", True), (True, "open", False), (False, "authenticated", False), (False, "deny", False),
])
def test_open_policy_without_debug_is_warned(debug: bool, policy: str, warned: bool) -> None:
    """coremq.W001 warns (with a hint) when DEFAULT_POLICY is open and DEBUG is off, and only then."""
    with override_settings(DEBUG=debug, COREMQ={"DEFAULT_POLICY": policy}):
        messages = check_access()
    assert [message.id for message in messages] == (["coremq.W001"] if warned else [])
    assert all(message.hint and not message.is_serious() for message in messages)


@pytest.mark.parametrize("value,error_id", [
    ({"DEFAULT_POLICY": "sometimes"}, "coremq.E008"),
    ({"CLIENT_TOKEN": 12}, "coremq.E003"),
    ({"CLIENT_TOKEN": "t", "CLIENT_USERNAME": "u", "CLIENT_PASSWORD": "p"}, "coremq.E010"),
    ({"CLIENT_USERNAME": "u"}, "coremq.E010"),
])
def test_bad_access_settings_are_errors(value: dict, error_id: str) -> None:
    """A default policy that does not exist, or muddled client credentials, are Errors with ids."""
    with override_settings(COREMQ=value):
        assert [error.id for error in check_settings()] == [error_id]


def test_client_options_carry_credentials_and_tls(tmp_path) -> None:
    """This process's clients log in with CLIENT_TOKEN and speak TLS, trusting TLS_CERT, when the broker does."""
    from security_world import tls_contexts

    tls_contexts(tmp_path)
    with override_settings(COREMQ={"CLIENT_TOKEN": "cmq_t", "TLS_CERT": str(tmp_path / "cert.pem"),
                                   "TLS_KEY": str(tmp_path / "key.pem")}):
        options = client_options()
    assert options["token"] == "cmq_t" and "username" not in options
    assert isinstance(options["ssl"], ssl.SSLContext) and options["ssl"].verify_mode == ssl.CERT_REQUIRED
    with override_settings(COREMQ={"CLIENT_USERNAME": "u", "CLIENT_PASSWORD": "p"}):
        assert conf.get_client_credentials() == {"username": "u", "password": "p"}
        assert "ssl" not in client_options()


def test_a_policy_matches_each_queue_name_once(monkeypatch) -> None:
    """Globs are matched once per queue name and snapshot (bounded), and the memory does not change equality."""
    from coremq_broker.core import access
    from coremq_broker.core.access import Rule

    calls: list[str] = []
    rule = Rule("orders.*", frozenset({"publish"}), authenticated=True)
    monkeypatch.setattr(Rule, "matches", lambda self, queue: calls.append(queue) or queue.startswith("orders."))
    policy = SitePolicy((rule,), default="deny")
    alice = Principal("alice", 1)
    assert all(policy.check(alice, "publish", "orders.eu") for _ in range(3)) and calls == ["orders.eu"]
    assert policy == SitePolicy((rule,), default="deny")
    monkeypatch.setattr(access, "MATCH_CACHE_SIZE", 2)
    for name in ("a", "b", "c"):
        policy.check(alice, "publish", name)
    assert len(policy._matching) <= 2
