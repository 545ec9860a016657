"""Who a connection is and what it may do: principals, rules, the policy, and rate limits.

Nothing here imports Django. Django's side (``coremq_broker.auth``) turns
users, groups, API tokens and the permission rules edited in the admin into
an immutable :class:`RulePolicy` snapshot off the event loop and hands it to
the broker; the same policy object answers for TCP and WebSocket clients.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

__all__ = [
    "ACTIONS", "POLICIES", "Principal", "ANONYMOUS", "Holder", "Rule", "AccessPolicy", "RulePolicy",
    "FailureTracker", "AuthAttempt", "CONNECTIONS", "is_connection_address", "peer_address", "denial",
    "subscription_limit",
]

#: What a rule can grant on a queue; "status" and "admin" are for staff.
ACTIONS = ("publish", "subscribe", "history")
#: Default policies for queues that no rule matches.
POLICIES = ("open", "authenticated", "deny")
#: Queue names whose matching rules a policy remembers (past it, it starts again).
MATCH_CACHE_SIZE = 10_000
#: Characters of a username that a login throttle keeps (Django's own limit is 150).
MAX_USERNAME_KEY = 256
#: The reserved pattern of a rule about connection ids (direct messages), not about queue names.
CONNECTIONS = "@connections"
#: A connection id as the broker makes them (``Broker.new_connection_id``: a UUID4 in lower case).
_CONNECTION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def is_connection_address(name: str) -> bool:
    """Whether ``name`` is a connection's address: an id (``<uuid>``) or a sub-address of one (``<uuid>/<n>``)."""
    return _CONNECTION_ID.fullmatch(name.partition("/")[0]) is not None


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


class Holder(Protocol):
    """What the policy asks about: a broker connection or a browser of the WebSocket bridge."""

    principal: Principal


def denial(action: str, name: str | None = None, why: str = "") -> str:
    """The text of a refusal by the access rules (or, with ``why``, by the privacy of a connection's queues)."""
    target = f" on queue {name!r}" if name else ""
    return f"permission denied: {action}{target}{f' ({why})' if why else ''}"


def subscription_limit(held: int, new: int, limit: int) -> str | None:
    """The refusal's text when ``new`` more subscriptions on top of ``held`` pass ``limit``, else None."""
    if held + new > limit:
        return f"too many subscriptions: limit is {limit} per connection"
    return None


@dataclass(frozen=True)
class Rule:
    """Grants ``actions`` on queues matching ``pattern`` (a name or a glob) to some principals.

    The pattern :data:`CONNECTIONS` matches connection ids and their
    sub-addresses only (the form the broker gives them: a lower-case UUID,
    then ``/<n>`` for a bridge's browser), never a name that a glob such as
    ``*-*-*-*-*`` would also match: it is the rule for direct messages.
    """

    pattern: str
    actions: frozenset[str]
    anonymous: bool = False
    authenticated: bool = False
    groups: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def matches(self, queue: str) -> bool:
        if self.pattern == CONNECTIONS:
            return is_connection_address(queue)
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

    def allows(self, holder: Holder, action: str, queue: str | None) -> bool:
        return True

    def is_revoked(self, principal: Principal) -> bool:
        """True when the credentials behind ``principal`` no longer hold (a revoked token)."""
        return False

    def ended(self, holder: Holder, names: Iterable[str]) -> list[str]:
        """Of the subscriptions ``names`` that ``holder`` holds, those this policy no longer allows, sorted.

        The one check of a policy change (or a new login) for TCP connections
        and the bridge's browsers alike.
        """
        return sorted(name for name in names if not self.allows(holder, "subscribe", name))


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
    #: The highest user id when the snapshot was read (None: every id was known): a user made
    #: since then is not in ``active_users`` yet, and is not taken for a removed one.
    newest_user: int | None = None
    # Globs are matched once per queue name and snapshot, not once per publish.
    _matching: dict[str, tuple[Rule, ...]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.default not in POLICIES:
            raise ValueError(f"default policy must be one of {POLICIES}, not {self.default!r}")

    def allows(self, holder: Holder, action: str, queue: str | None) -> bool:
        return self.check(holder.principal, action, queue)

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
        user = principal.user_id
        return (self.active_users is not None and user is not None and user not in self.active_users
                and (self.newest_user is None or user <= self.newest_user))


def peer_address(host: str) -> str:
    """What a login throttle counts as one address: the peer's host (its port left off by the caller).

    IPv4 addresses count one by one; an IPv6 address counts as its /64
    network, which one client can hold whole and walk through.
    """
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(frozen=True)
class AuthAttempt:
    """One login under way: from which address, for which username (None: a token), and when it began."""

    address: str
    username: str | None
    began: float


class FailureTracker:
    """Login attempts per address and per username within a window, and the delay a failure earns.

    An attempt counts as a failure from the moment :meth:`begin` lets it
    through, before the credentials are checked, and is settled afterwards:
    a failure stays counted, a success takes back its own attempt and nothing
    else (not the failures of other accounts from its address, nor the
    attempts under way for its username from elsewhere). So however many
    attempts run at once, at most ``limit`` are
    checked per address, and per username, in ``window`` seconds; the others
    are refused unchecked. Each failure doubles the wait before the answer
    (from ``base`` up to ``ceiling`` seconds). At most ``max_keys`` addresses
    and usernames are remembered; past it, the expired go, then the oldest.
    """

    def __init__(self, *, limit: int = 10, window: float = 300.0, base: float = 0.1, ceiling: float = 5.0,
                 max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.base = base
        self.ceiling = ceiling
        self.max_keys = max_keys
        self._stamps: dict[str, list[float]] = {}
        #: Logins that failed, and attempts refused unchecked (over the limit), since the start.
        self.failures = 0
        self.refused = 0

    @staticmethod
    def keys(address: str, username: str | None = None) -> tuple[str, ...]:
        """The counters of an attempt; a username is cut to :data:`MAX_USERNAME_KEY` characters."""
        return (f"address:{address}",) + ((f"user:{username[:MAX_USERNAME_KEY]}",) if username else ())

    def _recent(self, key: str, now: float) -> list[float]:
        stamps = self._stamps.get(key)
        if not stamps:
            return []
        if now - stamps[0] >= self.window:
            stamps = [t for t in stamps if now - t < self.window]
            if stamps:
                self._stamps[key] = stamps
            else:
                del self._stamps[key]
        return stamps

    def begin(self, address: str, username: str | None = None) -> AuthAttempt | None:
        """Count an attempt from ``address`` (for ``username``) before it is checked; None: refused, over the limit."""
        now = time.monotonic()
        keys = self.keys(address, username)
        if any(len(self._recent(key, now)) >= self.limit for key in keys):
            self.refused += 1
            return None
        if len(self._stamps) >= self.max_keys:
            self._forget(now)
        for key in keys:
            self._stamps.setdefault(key, []).append(now)
        return AuthAttempt(address, username, now)

    def settle(self, attempt: AuthAttempt, succeeded: bool) -> None:
        """The outcome of an attempt :meth:`begin` let through."""
        if not succeeded:
            self.failures += 1
            return
        for key in self.keys(attempt.address, attempt.username):
            stamps = self._stamps.get(key)
            if stamps and attempt.began in stamps:
                stamps.remove(attempt.began)
                if not stamps:
                    del self._stamps[key]

    def _forget(self, now: float) -> None:
        for key in list(self._stamps):
            self._recent(key, now)
        while len(self._stamps) >= self.max_keys:
            del self._stamps[next(iter(self._stamps))]

    def delay(self, address: str, username: str | None = None) -> float:
        """The wait before answering a failure: doubled by each failure counted against it."""
        now = time.monotonic()
        count = max(len(self._recent(key, now)) for key in self.keys(address, username))
        return 0.0 if count == 0 else min(self.ceiling, self.base * 2 ** (count - 1))

    def blocked(self, address: str, username: str | None = None) -> bool:
        now = time.monotonic()
        return any(len(self._recent(key, now)) >= self.limit for key in self.keys(address, username))

    def describe(self) -> dict[str, int]:
        """The counters of the status page: failures, refused attempts, addresses and usernames blocked now."""
        now = time.monotonic()
        blocked = sum(1 for stamps in self._stamps.values()
                      if len(stamps) >= self.limit and now - stamps[-self.limit] < self.window)
        return {"auth_failures": self.failures, "auth_refused": self.refused, "auth_blocked": blocked}


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
