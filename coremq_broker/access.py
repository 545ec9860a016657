"""Who a connection is and what it may do: principals, rules, the policy, and rate limits.

Nothing here imports Django. Django's side (``coremq_broker.auth``) turns
users, groups, API tokens and the permission rules edited in the admin into
an immutable :class:`RulePolicy` snapshot off the event loop and hands it to
the broker; the same policy object answers for TCP and WebSocket clients.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .registry import Connection

__all__ = [
    "ACTIONS", "POLICIES", "Principal", "ANONYMOUS", "Rule", "AccessPolicy", "RulePolicy",
    "FailureTracker",
]

#: What a rule can grant on a queue; "status" and "admin" are for staff.
ACTIONS = ("publish", "subscribe", "history")
#: Default policies for queues that no rule matches.
POLICIES = ("open", "authenticated", "deny")
#: Queue names whose matching rules a policy remembers (past it, it starts again).
MATCH_CACHE_SIZE = 10_000


@dataclass(frozen=True)
class Principal:
    """Who is on a connection. ``token_id`` names the API token it used, if any."""

    username: str | None = None
    user_id: int | None = None
    is_staff: bool = False
    groups: frozenset[str] = frozenset()
    token_id: int | None = None

    @property
    def authenticated(self) -> bool:
        return self.username is not None


ANONYMOUS = Principal()


@dataclass(frozen=True)
class Rule:
    """Grants ``actions`` on queues matching ``pattern`` (a name or a glob) to some principals."""

    pattern: str
    actions: frozenset[str]
    anonymous: bool = False
    authenticated: bool = False
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def matches(self, queue: str) -> bool:
        return self.pattern == queue or fnmatch.fnmatchcase(queue, self.pattern)

    def grants(self, principal: Principal, action: str) -> bool:
        if action not in self.actions:
            return False
        if self.anonymous:
            return True
        if not principal.authenticated:
            return False
        return self.authenticated or principal.username in self.users or bool(self.groups & principal.groups)


class AccessPolicy:
    """Decides who may do what on which queue. This base allows everything.

    ``action`` is ``"publish"``, ``"subscribe"``, ``"history"``, ``"status"`` or
    ``"admin"``. A connection's private queues are checked by the broker first.
    """

    def allows(self, connection: "Connection", action: str, queue: str | None) -> bool:
        return True

    def is_revoked(self, principal: Principal) -> bool:
        """True when the credentials behind ``principal`` no longer hold (a revoked token)."""
        return False


@dataclass(frozen=True)
class RulePolicy(AccessPolicy):
    """An immutable snapshot of the permission rules.

    A queue that some rule matches is governed by its matching rules alone:
    an action is allowed when any of them grants it. A queue that no rule
    matches follows ``default``: ``open`` allows everyone, ``authenticated``
    any authenticated user, ``deny`` nobody. Staff may always ask for status
    and administer; under ``open`` anyone may ask for status.
    """

    rules: tuple[Rule, ...] = ()
    default: str = "open"
    revoked_tokens: frozenset[int] = field(default_factory=frozenset)
    active_users: frozenset[int] | None = None  # None: not checked
    # Globs are matched once per queue name and snapshot, not once per publish.
    _matching: dict[str, tuple[Rule, ...]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.default not in POLICIES:
            raise ValueError(f"default policy must be one of {POLICIES}, not {self.default!r}")

    def allows(self, connection: "Connection", action: str, queue: str | None) -> bool:
        return self.check(connection.principal, action, queue)

    def check(self, principal: Principal, action: str, queue: str | None) -> bool:
        if action == "admin":
            return principal.is_staff
        if action == "status":
            return principal.is_staff or self.default == "open"
        assert queue is not None
        matching = self.matching(queue)
        if matching:
            return any(rule.grants(principal, action) for rule in matching)
        if self.default == "open":
            return True
        if self.default == "authenticated":
            return principal.authenticated
        return False

    def matching(self, queue: str) -> tuple[Rule, ...]:
        """The rules whose pattern matches ``queue``, remembered (up to :data:`MATCH_CACHE_SIZE` names)."""
        found = self._matching.get(queue)
        if found is None:
            if len(self._matching) >= MATCH_CACHE_SIZE:
                self._matching.clear()
            found = self._matching[queue] = tuple(rule for rule in self.rules if rule.matches(queue))
        return found

    def is_revoked(self, principal: Principal) -> bool:
        if principal.token_id is not None and principal.token_id in self.revoked_tokens:
            return True
        return (self.active_users is not None and principal.user_id is not None
                and principal.user_id not in self.active_users)


class FailureTracker:
    """Failed authentications per address within a window, and the delay they earn.

    Each failure doubles the delay before the next answer to that address
    (from ``base`` up to ``ceiling`` seconds), so passwords cannot be tried at
    speed; past ``limit`` failures in ``window`` seconds the address is refused.
    """

    def __init__(self, *, limit: int = 10, window: float = 300.0, base: float = 0.1, ceiling: float = 5.0) -> None:
        self.limit = limit
        self.window = window
        self.base = base
        self.ceiling = ceiling
        self._failures: dict[str, list[float]] = {}

    def _recent(self, address: str, now: float) -> list[float]:
        stamps = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if stamps:
            self._failures[address] = stamps
        else:
            self._failures.pop(address, None)
        return stamps

    def failed(self, address: str) -> None:
        now = time.monotonic()
        self._failures[address] = self._recent(address, now) + [now]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)

    def delay(self, address: str) -> float:
        count = len(self._recent(address, time.monotonic()))
        return 0.0 if count == 0 else min(self.ceiling, self.base * 2 ** (count - 1))

    def blocked(self, address: str) -> bool:
        return len(self._recent(address, time.monotonic())) >= self.limit


def rules_from(rows: Iterable[dict]) -> tuple[Rule, ...]:
    """Rules from plain dicts (as Django's side builds them from the admin's rows)."""
    return tuple(
        Rule(
            pattern=row["pattern"],
            actions=frozenset(row.get("actions", ())),
            anonymous=bool(row.get("anonymous")),
            authenticated=bool(row.get("authenticated")),
            groups=frozenset(row.get("groups", ())),
            users=frozenset(row.get("users", ())),
        )
        for row in rows
    )
