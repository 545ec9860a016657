"""The access policy from the admin: permission rules, the default, relays, revoked tokens and inactive users.

:func:`load_policy` reads it all as one immutable :class:`SitePolicy` (a
:class:`~coremq_broker.core.access.RulePolicy`); :func:`access_watcher` makes the
:class:`~coremq_broker.snapshots.SnapshotWatcher` that keeps a running
broker's (or a remote WebSocket bridge's) copy in step within a second, so a
changed rule ends subscriptions it no longer allows and a revoked or expired
token, or a deactivated user, loses its connections. A token that expires
changes the snapshot by itself: the watcher's next poll after the expiry sees
it. Blocking code: call it off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from channels.db import database_sync_to_async

from django.contrib.auth import get_user_model
from django.db.models import Max, Q
from django.utils import timezone

from .. import conf
from ..core.access import ACTIONS, Principal, RulePolicy, rules_from
from ..snapshots import SnapshotWatcher

if TYPE_CHECKING:
    from ..core.broker import Broker

__all__ = ["SitePolicy", "BRIDGE", "RELAY_PERMISSION", "load_policy", "empty_policy", "access_watcher",
           "describe_policy", "PolicyFollower", "follow_policy"]

#: The Django permission that makes a user a relay (see :class:`SitePolicy`).
RELAY_PERMISSION = "coremq_broker.relay"

#: The principal of a broker connection that this process opens for many
#: browsers: the in-process WebSocket bridge. It is recognised by identity, so
#: nothing that arrives over the network can claim it.
BRIDGE = Principal(username="(websocket bridge)")


@dataclass(frozen=True)
class SitePolicy(RulePolicy):
    """:class:`RulePolicy` plus *relays*: connections that act for many users and check each one themselves.

    A WebSocket bridge is one broker connection for all the browsers of its
    web process; it runs this same policy for every browser's request, so the
    broker lets the bridge itself publish, subscribe and read history
    anywhere: the in-process bridge (:data:`BRIDGE`) and the users with the
    ``coremq_broker.relay`` permission (``relays``: their ids; a separate
    web process logs in as one with ``COREMQ['CLIENT_TOKEN']``). Status and
    admin requests stay for staff.
    """

    relays: frozenset[int] = field(default_factory=frozenset)

    def check(self, principal: Principal, action: str, queue: str | None) -> bool:
        if action in ACTIONS and (principal is BRIDGE or principal.user_id in self.relays):
            return True
        return super().check(principal, action, queue)


def load_policy() -> SitePolicy:
    """The policy as the database and ``COREMQ['DEFAULT_POLICY']`` say now: six small queries (rules, their groups
    and users, invalid tokens, active users, relays)."""
    from django.contrib.auth.models import Permission

    from ..models import ApiToken, PermissionRule

    rows = [
        {
            "pattern": rule.pattern,
            "actions": rule.actions(),
            "anonymous": rule.anonymous,
            "authenticated": rule.authenticated,
            "groups": [group.name for group in rule.groups.all()],
            "users": [user.get_username() for user in rule.users.all()],
        }
        for rule in PermissionRule.objects.prefetch_related("groups", "users")
    ]
    invalid = Q(revoked__isnull=False) | Q(expires__lte=timezone.now())
    app_label, codename = RELAY_PERMISSION.split(".")
    relay = Permission.objects.filter(content_type__app_label=app_label, codename=codename)
    # Read before the active users: one made in between is then newer, not taken for a removed one.
    newest_user = get_user_model().objects.aggregate(newest=Max("pk"))["newest"] or 0
    active = get_user_model().objects.filter(is_active=True)
    return SitePolicy(
        rules=rules_from(rows),
        default=conf.get_web_setting("DEFAULT_POLICY"),
        revoked_tokens=frozenset(ApiToken.objects.filter(invalid).values_list("pk", flat=True)),
        active_users=frozenset(active.values_list("pk", flat=True)),
        newest_user=newest_user,
        relays=frozenset(active.filter(Q(user_permissions__in=relay) | Q(groups__permissions__in=relay))
                         .values_list("pk", flat=True)),
    )


def empty_policy() -> SitePolicy:
    """The default policy alone: what applies while the tables cannot be read."""
    return SitePolicy(default=conf.get_web_setting("DEFAULT_POLICY"))


def describe_policy(policy: SitePolicy) -> str:
    return (f"default {policy.default!r}, {len(policy.rules)} rule(s), {len(policy.relays)} relay(s), "
            f"{len(policy.revoked_tokens)} revoked or expired token(s)")


def access_senders() -> list[type]:
    """The models whose changes change the access policy (rules, tokens, users, groups, permissions)."""
    from django.contrib.auth.models import Group

    from ..models import ApiToken, PermissionRule

    user_model = get_user_model()
    return [PermissionRule, PermissionRule.groups.through, PermissionRule.users.through, ApiToken,
            user_model, user_model.groups.through, user_model.user_permissions.through,  # type: ignore[attr-defined]
            Group.permissions.through]


def access_fingerprint() -> tuple[Any, ...]:
    """What moves when the policy may have, in one small query.

    The change counter (every ORM save, delete and relation change), plus what
    bulk updates that send no signal can change and time alone changes: how
    many tokens are revoked or expired by now, and how many users are active.
    """
    from django.db import connection

    from ..models import ApiToken, ChangeCounter

    user_table = get_user_model()._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT (SELECT value FROM {ChangeCounter._meta.db_table} WHERE id = 1),"
            f" (SELECT COUNT(*) FROM {ApiToken._meta.db_table} WHERE revoked IS NOT NULL OR expires <= %s),"
            f" (SELECT COUNT(*) FROM {user_table} WHERE is_active)",
            [timezone.now()],
        )
        return tuple(cursor.fetchone())


def access_watcher(apply: Callable[[Any, SitePolicy], None] | None = None, *,
                   interval: float = 0.5) -> SnapshotWatcher[SitePolicy, Any]:
    """A watcher of the access policy; each new one goes to ``apply(target, policy)``.

    The default ``apply`` is the broker's ``set_access``; a remote WebSocket
    bridge gives its own.
    """
    return SnapshotWatcher(
        load_policy, apply or _set_access, initial=empty_policy(), what="access policy",
        describe=describe_policy, interval=interval, senders=access_senders(), fingerprint=access_fingerprint,
    )


def _set_access(target: "Broker | PolicyFollower", policy: SitePolicy) -> None:
    target.set_access(policy)


class PolicyFollower:
    """The access policy of a web process that does not run the broker (its WebSocket bridge checks browsers)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, access: SitePolicy) -> None:
        self.loop = loop
        self.access = access
        #: Called on the loop with each new policy (the bridge holds its browsers to it), as ``Broker.on_access_change``.
        self.on_access_change: list[Callable[[SitePolicy], None]] = []

    def set_access(self, access: SitePolicy) -> None:
        self.access = access
        for callback in list(self.on_access_change):
            callback(access)


async def follow_policy() -> tuple[PolicyFollower, Callable[[], None]]:
    """A :class:`PolicyFollower` on the running loop kept in step by a watcher thread, and what stops it.

    The stop does not wait for the thread, which ends after its current read.
    """
    watcher = await database_sync_to_async(access_watcher, thread_sensitive=False)()
    follower = PolicyFollower(asyncio.get_running_loop(), watcher.snapshot)
    watcher.attach(follower)
    return follower, lambda: watcher.stop(timeout=0)
