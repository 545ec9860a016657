"""Per-queue settings from the admin, handed to a running broker without a restart.

The broker asks a *resolver* (``name -> QueueSettings``) for each new queue and
never imports Django. Here the :class:`~coremq_broker.models.QueueSetting`
rows become a :class:`QueueSettingsResolver`, an immutable snapshot, and a
:class:`QueueSettingsWatcher` (a :class:`~coremq_broker.snapshots.SnapshotWatcher`:
one small ``SELECT`` in a thread every half second, or at once after a save in
this process) hands each changed one to the loop's ``registry.reload_settings``,
which re-resolves every live queue.

Precedence, field by field: the row whose pattern is the queue's exact name;
then the matching globs (``fnmatch``, case-sensitive), the one with the most
literal (non-wildcard) characters first, ties broken by the pattern that sorts
first; then the defaults from ``settings.COREMQ`` (``HISTORY_LENGTH``,
``SLOW_CONSUMER_POLICY``; no message size limit but the frame limit). So a
``*`` row sets a default for every queue that a more specific row can refine
one field at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .core.config import BrokerConfig
from .core.registry import QueueSettings
from .snapshots import SnapshotWatcher, change_count

if TYPE_CHECKING:
    from .core.broker import Broker

__all__ = [
    "QueueRule", "QueueSettingsResolver", "QueueSettingsWatcher", "default_queue_settings", "load_rules", "is_glob",
]

#: A pattern holding any of these is a glob (``fnmatch``: ``*``, ``?``, ``[seq]``).
GLOB_CHARACTERS = frozenset("*?[")
_WILDCARDS = re.compile(r"\*|\?|\[[^\]]*\]")


def is_glob(pattern: str) -> bool:
    return not GLOB_CHARACTERS.isdisjoint(pattern)


def default_queue_settings(config: BrokerConfig) -> QueueSettings:
    """The settings of a queue that no row matches: ``settings.COREMQ``'s."""
    return QueueSettings.from_config(config)


@dataclass(frozen=True)
class QueueRule:
    """One row: a pattern and the QueueSettings attributes it sets."""

    pattern: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def is_glob(self) -> bool:
        return is_glob(self.pattern)

    @property
    def specificity(self) -> int:
        """How many characters of a name the pattern pins down (wildcards count for none)."""
        return len(_WILDCARDS.sub("", self.pattern))


class QueueSettingsResolver:
    """``resolver(name)`` is the :class:`QueueSettings` of queue ``name``. Immutable; cheap to call.

    Called by the broker on the event loop once per new queue: an exact
    lookup, then one precompiled regex per glob row.
    """

    __slots__ = ("defaults", "rules", "_exact", "_globs")

    def __init__(self, defaults: QueueSettings, rules: Iterable[QueueRule] = ()) -> None:
        self.defaults = defaults
        self.rules = tuple(rules)
        self._exact = {rule.pattern: rule for rule in self.rules}
        globs = sorted((rule for rule in self.rules if rule.is_glob), key=lambda r: (-r.specificity, r.pattern))
        self._globs = tuple((re.compile(translate(rule.pattern)), rule) for rule in globs)

    def matching(self, name: str) -> list[QueueRule]:
        """The rules that apply to ``name``, the one that wins first."""
        matched = [self._exact[name]] if name in self._exact else []
        matched.extend(rule for regex, rule in self._globs if regex.match(name) and rule not in matched)
        return matched

    def __call__(self, name: str) -> QueueSettings:
        matched = self.matching(name)
        if not matched:
            return self.defaults
        values = {field: getattr(self.defaults, field) for field in QueueSettings.__slots__}
        for rule in reversed(matched):  # the winner last, so its values stay
            values.update(rule.overrides)
        return QueueSettings(**values)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QueueSettingsResolver) and self.defaults == other.defaults
                and self.rules == other.rules)

    def __repr__(self) -> str:
        return f"QueueSettingsResolver({self.defaults!r}, {len(self.rules)} rule(s))"


def load_rules() -> tuple[QueueRule, ...]:
    """Read every QueueSetting row (blocking: call it off the event loop)."""
    from .models import QueueSetting

    return tuple(QueueRule(row.pattern, tuple(sorted(row.overrides().items())))
                 for row in QueueSetting.objects.order_by("pattern"))


class QueueSettingsWatcher(SnapshotWatcher[QueueSettingsResolver, "Broker"]):
    """Keeps a running broker's per-queue settings in step with the QueueSetting table.

    A :class:`~coremq_broker.snapshots.SnapshotWatcher` whose snapshot is the
    :attr:`resolver` built from ``load()``'s rows; each new one goes to
    ``registry.reload_settings``, which re-resolves every live queue. A table
    that cannot be read (not migrated yet) means the defaults.
    """

    def __init__(self, config: BrokerConfig, *, interval: float = 0.5,
                 load: Callable[[], tuple[QueueRule, ...]] = load_rules) -> None:
        from .models import QueueSetting

        self.defaults = defaults = default_queue_settings(config)
        super().__init__(lambda: QueueSettingsResolver(defaults, load()), _reload_settings,
                         initial=QueueSettingsResolver(defaults), what="per-queue settings",
                         describe=lambda resolver: f"{len(resolver.rules)} row(s)", interval=interval,
                         senders=[QueueSetting], fingerprint=change_count)

    @property
    def resolver(self) -> QueueSettingsResolver:
        return self.snapshot


def _reload_settings(broker: "Broker", resolver: QueueSettingsResolver) -> None:
    broker.registry.reload_settings(resolver)
