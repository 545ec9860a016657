"""The broker's settings that live in the database, edited in the admin.

:class:`QueueSetting` rows override ``settings.COREMQ`` for the queues they
match; :class:`PermissionRule` rows say who may publish, subscribe and read
history where; :class:`ApiToken` rows let programs log in. The broker never
reads them itself: :mod:`coremq_broker.queue_settings` and
:mod:`coremq_broker.auth.policy` load them in a thread of their own, turn them
into immutable snapshots and hand those to the broker's event loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from coremq_client.codec import DEFAULT_MAX_QUEUE_NAME_LENGTH, validate_queue_name
from coremq_client.errors import InvalidQueueName

from .core.access import ACTIONS, CONNECTIONS
from .auth.tokens import PREFIX_LENGTH, new_token, token_hash, token_prefix
from .queue_settings import is_glob

__all__ = ["ChangeCounter", "QueueSetting", "PermissionRule", "ApiToken"]


def validate_pattern(value: str) -> None:
    """A pattern follows the rules of queue names: no whitespace, not empty, not too long."""
    try:
        validate_queue_name(value, DEFAULT_MAX_QUEUE_NAME_LENGTH)
    except InvalidQueueName as exc:
        raise ValidationError(str(exc)) from None


def validate_rule_pattern(value: str) -> None:
    """A rule's pattern: a queue name or glob, or :data:`~coremq_broker.core.access.CONNECTIONS`.

    Other patterns starting with ``@`` are kept for other kinds of rule; a
    typo there must not become a rule about a queue called ``@conections``.
    """
    if value == CONNECTIONS:
        return
    if value.startswith("@"):
        raise ValidationError(f"patterns starting with @ are reserved: the only one is {CONNECTIONS} "
                              f"(connection ids, for direct messages)")
    validate_pattern(value)


class QueueSetting(models.Model):
    """How the queues matching ``pattern`` behave; an empty field keeps the default.

    Precedence (see :mod:`coremq_broker.queue_settings`): field by field, the
    row naming the queue exactly wins, then the matching glob with the most
    literal characters (ties: the pattern that sorts first), then
    ``settings.COREMQ``.

    Later issues add a field here, in :attr:`OVERRIDES`, and in
    :class:`~coremq_broker.core.registry.QueueSettings`; nothing else changes.
    """

    SLOW_CONSUMER_POLICIES = [
        ("disconnect", "disconnect: cut the subscriber off with ERROR: slow consumer"),
        ("drop", "drop: drop its oldest undelivered messages and tell it which"),
    ]
    #: The fields that override a QueueSettings attribute of the same name.
    OVERRIDES = ("history_length", "max_message_size", "slow_consumer_policy", "durable")

    pattern = models.CharField(
        max_length=DEFAULT_MAX_QUEUE_NAME_LENGTH, unique=True, validators=[validate_pattern],
        help_text="A queue name (orders) or a glob (orders.*, sensor-?, [ab]*). An exact name beats a glob; "
                  "among globs the one with the most literal characters wins, field by field.",
    )
    history_length = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Messages kept for history requests. Empty: COREMQ['HISTORY_LENGTH'].",
    )
    max_message_size = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="Largest message accepted, in bytes of JSON. Empty: only the frame limit applies.",
    )
    slow_consumer_policy = models.CharField(
        max_length=20, blank=True, choices=SLOW_CONSUMER_POLICIES,
        help_text="What happens to a subscriber that does not keep up. Empty: "
                  "COREMQ['SLOW_CONSUMER_POLICY'].",
    )
    durable = models.BooleanField(
        null=True, blank=True,
        help_text="Keep the history on disk (SQLite, survives restarts and kill -9; a publish is acknowledged "
                  "once written). Empty: COREMQ['DURABLE_ALL'].",
    )
    note = models.CharField(max_length=200, blank=True, help_text="Why this queue is set this way.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pattern"]
        verbose_name = "queue setting"

    def __str__(self) -> str:
        return self.pattern

    @property
    def is_glob(self) -> bool:
        return is_glob(self.pattern)

    def overrides(self) -> dict[str, Any]:
        """The fields this row sets, by QueueSettings attribute name."""
        values = {name: getattr(self, name) for name in self.OVERRIDES}
        return {name: value for name, value in values.items() if value is not None and value != ""}


class PermissionRule(models.Model):
    """Grants rights on the queues matching ``pattern`` to anonymous clients, any user, groups or users.

    Every rule whose pattern matches a queue takes part, and an action is
    allowed when any of them grants it to the principal; a rule that grants
    nothing to anyone therefore closes its queues. Queues that no rule
    matches follow ``COREMQ['DEFAULT_POLICY']``. See ``docs/security.md``.
    """

    pattern = models.CharField(
        max_length=DEFAULT_MAX_QUEUE_NAME_LENGTH, validators=[validate_rule_pattern],
        help_text="A queue name (orders), a glob (orders.*, sensor-?, [ab]*), or @connections: the ids of "
                  "connections and their sub-addresses only (direct messages; no queue name matches it). "
                  "Every rule matching a queue counts: a right is granted when any of them grants it, and "
                  "queues that no rule matches follow COREMQ['DEFAULT_POLICY'].",
    )
    publish = models.BooleanField(default=False, help_text="Send messages to these queues.")
    subscribe = models.BooleanField(default=False, help_text="Receive the messages published to them.")
    history = models.BooleanField(default=False, help_text="Read their recent messages.")
    anonymous = models.BooleanField(
        default=False, help_text="Grant to everyone, logged in or not.")
    authenticated = models.BooleanField(
        default=False, help_text="Grant to every user who logged in (password or token).")
    groups = models.ManyToManyField(Group, blank=True, related_name="coremq_rules",
                                    help_text="Grant to the members of these groups.")
    users = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="coremq_rules",
                                   help_text="Grant to these users.")
    note = models.CharField(max_length=200, blank=True, help_text="Why this rule exists.")
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["pattern", "id"]
        verbose_name = "permission rule"
        # Not about rules, but about who rules do not apply to: a service that acts
        # for many users and checks each of them itself (a WebSocket bridge in a
        # web process of its own, logged in with COREMQ['CLIENT_TOKEN']).
        permissions = [("relay", "Can relay for other users (publish, subscribe and read history anywhere)")]

    def __str__(self) -> str:
        return f"{self.pattern}: {', '.join(self.actions()) or 'nothing'}"

    def actions(self) -> list[str]:
        """The rights this rule grants, by the access policy's names."""
        return [action for action in ACTIONS if getattr(self, action)]

    @property
    def kind(self) -> str:
        """What the pattern matches: ``connection ids``, a ``glob`` or a queue ``name``."""
        if self.pattern == CONNECTIONS:
            return "connection ids"
        return "glob" if is_glob(self.pattern) else "name"


class ApiTokenManager(models.Manager["ApiToken"]):
    def issue(self, user: Any, name: str, *, expires: datetime | None = None) -> tuple["ApiToken", str]:
        """Create a token for ``user``; return the row and the token itself, which is never stored."""
        token = ApiToken(user=user, name=name, expires=expires)
        secret = token.set_secret()
        token.save()
        return token, secret


class ApiToken(models.Model):
    """A secret a program logs in with, as ``user``. Only its hash is kept; it is shown once, when made."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="coremq_tokens",
                             help_text="Who a client logged in with this token is.")
    name = models.CharField(max_length=100, help_text="What uses it, e.g. 'billing service'.")
    prefix = models.CharField(max_length=PREFIX_LENGTH, editable=False, db_index=True,
                              help_text="The token's first characters, to tell it apart.")
    key_hash = models.CharField(max_length=64, editable=False, unique=True, help_text="SHA-256 of the token.")
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(null=True, blank=True,
                                   help_text="After this the token no longer logs in, and its connections "
                                             "are closed. Empty: never.")
    revoked = models.DateTimeField(null=True, blank=True, editable=False,
                                   help_text="When it was revoked; its connections were closed then.")
    last_used = models.DateTimeField(null=True, blank=True, editable=False)

    objects = ApiTokenManager()

    class Meta:
        ordering = ["-created"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def set_secret(self) -> str:
        """Give this row a new token; return it (the caller shows it once; only the hash is kept)."""
        secret = new_token()
        self.prefix = token_prefix(secret)
        self.key_hash = token_hash(secret)
        return secret

    def is_valid(self, now: datetime | None = None) -> bool:
        """Not revoked and not expired (the user's own state is checked apart)."""
        now = now or timezone.now()
        return self.revoked is None and (self.expires is None or self.expires > now)

    @property
    def state(self) -> str:
        if self.revoked is not None:
            return "revoked"
        return "active" if self.is_valid() else "expired"


class ChangeCounter(models.Model):
    """One row whose ``value`` goes up whenever something a broker follows changes, in any process.

    The watchers of :mod:`coremq_broker.snapshots` read this one number on
    each poll and load the tables only when it moved, so that following the
    admin costs the broker's process almost nothing between changes.
    Model signals bump it (:func:`coremq_broker.snapshots.count_changes_of` connects them).
    """

    value = models.BigIntegerField(default=0)

    class Meta:
        verbose_name = "change counter"

    def __str__(self) -> str:
        return f"changes: {self.value}"
