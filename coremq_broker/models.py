"""The broker's settings that live in the database, edited in the admin.

:class:`QueueSetting` rows override ``settings.COREMQ`` for the queues they
match. The broker never reads them itself: :mod:`coremq_broker.queue_settings`
loads them in a thread of its own, turns them into an immutable resolver and
hands that to the broker's event loop.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models

from coremq_client.codec import DEFAULT_MAX_QUEUE_NAME_LENGTH, validate_queue_name
from coremq_client.errors import InvalidQueueName

from .queue_settings import is_glob

__all__ = ["QueueSetting"]


def validate_pattern(value: str) -> None:
    """A pattern follows the rules of queue names: no whitespace, not empty, not too long."""
    try:
        validate_queue_name(value, DEFAULT_MAX_QUEUE_NAME_LENGTH)
    except InvalidQueueName as exc:
        raise ValidationError(str(exc)) from None


class QueueSetting(models.Model):
    """How the queues matching ``pattern`` behave; an empty field keeps the default.

    Precedence (see :mod:`coremq_broker.queue_settings`): field by field, the
    row naming the queue exactly wins, then the matching glob with the most
    literal characters (ties: the pattern that sorts first), then
    ``settings.COREMQ``.

    Later issues add a field here, in :attr:`OVERRIDES`, and in
    :class:`~coremq_broker.registry.QueueSettings`; nothing else changes.
    """

    SLOW_CONSUMER_POLICIES = [
        ("disconnect", "disconnect: cut the subscriber off with ERROR: slow consumer"),
        ("drop", "drop: drop its oldest undelivered messages and tell it which"),
    ]
    #: The fields that override a QueueSettings attribute of the same name.
    OVERRIDES = ("history_length", "max_message_size", "slow_consumer_policy")

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
