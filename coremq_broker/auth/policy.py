"""The access policy from the admin: permission rules, the default, revoked tokens and inactive users.

:func:`load_policy` reads it all as one immutable
:class:`~coremq_broker.access.RulePolicy`; :func:`access_watcher` makes the
:class:`~coremq_broker.snapshots.SnapshotWatcher` that keeps a running
broker's (or a remote WebSocket bridge's) copy in step within a second, so a
changed rule ends subscriptions it no longer allows and a revoked or expired
token, or a deactivated user, loses its connections. A token that expires
changes the snapshot by itself: the watcher's next poll after the expiry sees
it. Blocking code: call it off the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from django.contrib.auth import get_user_model
from django.db.models import Q
from django.utils import timezone

from .. import conf
from ..access import RulePolicy, rules_from
from ..snapshots import SnapshotWatcher

if TYPE_CHECKING:
    from ..broker import Broker

__all__ = ["load_policy", "empty_policy", "access_watcher", "describe_policy"]


def load_policy() -> RulePolicy:
    """The policy as the database and ``COREMQ['DEFAULT_POLICY']`` say now. Three small queries."""
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
    return RulePolicy(
        rules=rules_from(rows),
        default=conf.get_web_setting("DEFAULT_POLICY"),
        revoked_tokens=frozenset(ApiToken.objects.filter(invalid).values_list("pk", flat=True)),
        active_users=frozenset(get_user_model().objects.filter(is_active=True).values_list("pk", flat=True)),
    )


def empty_policy() -> RulePolicy:
    """The default policy alone: what applies while the tables cannot be read."""
    return RulePolicy(default=conf.get_web_setting("DEFAULT_POLICY"))


def describe_policy(policy: RulePolicy) -> str:
    return (f"default {policy.default!r}, {len(policy.rules)} rule(s), "
            f"{len(policy.revoked_tokens)} revoked or expired token(s)")


def access_watcher(apply: Callable[[Any, RulePolicy], None] | None = None, *,
                   interval: float = 0.5) -> SnapshotWatcher[RulePolicy, Any]:
    """A watcher of the access policy; each new one goes to ``apply(target, policy)``.

    The default ``apply`` is the broker's ``set_access``; a remote WebSocket
    bridge gives its own.
    """
    from ..models import ApiToken, PermissionRule

    user_model = get_user_model()
    return SnapshotWatcher(
        load_policy, apply or _set_access, initial=empty_policy(), what="access policy",
        describe=describe_policy, interval=interval,
        senders=[PermissionRule, PermissionRule.groups.through, PermissionRule.users.through, ApiToken,
                 user_model, user_model.groups.through],  # type: ignore[attr-defined]
    )


def _set_access(broker: "Broker", policy: RulePolicy) -> None:
    broker.set_access(policy)
