"""Per-queue settings from the admin, handed to a running broker without a restart.

The broker asks a *resolver* (``name -> QueueSettings``) for each new queue and
never imports Django. Here the :class:`~coremq_broker.models.QueueSetting`
rows become a :class:`QueueSettingsResolver`, an immutable snapshot, and a
:class:`QueueSettingsWatcher` keeps a running broker in step with the table:

- the rows are read in the watcher's own thread, never on the event loop;
- every ``interval`` seconds (0.5) it reads them again, which is one small
  ``SELECT`` (a handful of rows), and compares them with the last read; a save
  in this process (the admin under ``run_coremq``) wakes it at once, after the
  transaction commits. Polling also catches saves made by other processes (a
  separate daphne, ``manage.py shell``), so a change reaches the broker within
  a second either way;
- a changed table becomes a new resolver, passed to the loop with
  ``call_soon_threadsafe(registry.reload_settings, resolver)``, which
  re-resolves every live queue.

Precedence, field by field: the row whose pattern is the queue's exact name;
then the matching globs (``fnmatch``, case-sensitive), the one with the most
literal (non-wildcard) characters first, ties broken by the pattern that sorts
first; then the defaults from ``settings.COREMQ`` (``HISTORY_LENGTH``,
``SLOW_CONSUMER_POLICY``; no message size limit but the frame limit). So a
``*`` row sets a default for every queue that a more specific row can refine
one field at a time.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from fnmatch import translate
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .config import BrokerConfig
from .registry import QueueSettings

if TYPE_CHECKING:
    from .broker import Broker

__all__ = [
    "QueueRule", "QueueSettingsResolver", "QueueSettingsWatcher", "default_queue_settings", "load_rules", "is_glob",
]

logger = logging.getLogger("coremq.queue_settings")

#: A pattern holding any of these is a glob (``fnmatch``: ``*``, ``?``, ``[seq]``).
GLOB_CHARACTERS = frozenset("*?[")
_WILDCARDS = re.compile(r"\*|\?|\[[^\]]*\]")


def is_glob(pattern: str) -> bool:
    return not GLOB_CHARACTERS.isdisjoint(pattern)


def default_queue_settings(config: BrokerConfig) -> QueueSettings:
    """The settings of a queue that no row matches: ``settings.COREMQ``'s."""
    return QueueSettings(config.history_length, slow_consumer_policy=config.slow_consumer_policy)


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


class QueueSettingsWatcher:
    """Keeps a running broker's per-queue settings in step with the QueueSetting table.

    Create it where blocking is fine (``run_coremq``'s ``handle``): it reads
    the rows once, so that :attr:`resolver` can be given to the Broker. Then
    :meth:`attach` (``server.run``'s ``on_start`` hook) starts the thread and
    returns :meth:`stop`. A table that cannot be read (not migrated yet) means
    the defaults, with one warning, and is tried again at every poll.
    """

    def __init__(self, config: BrokerConfig, *, interval: float = 0.5,
                 load: Callable[[], tuple[QueueRule, ...]] = load_rules) -> None:
        self.defaults = default_queue_settings(config)
        self.interval = interval
        self._load = load
        self._rules: tuple[QueueRule, ...] | None = None
        self._last_error: str | None = None
        self.resolver = QueueSettingsResolver(self.defaults)
        self._broker: Broker | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.check()

    def check(self) -> bool:
        """Read the rows; if they changed, build a new resolver and hand it to the broker. Blocking.

        Returns True when the settings changed.
        """
        try:
            rules = self._load()
        except Exception as exc:  # DatabaseError, but also a broken row: keep the broker running
            if str(exc) != self._last_error:
                logger.warning("per-queue settings cannot be read (%s); queues keep their settings", exc)
                self._last_error = str(exc)
            return False
        self._last_error = None
        if rules == self._rules:
            return False
        self._rules = rules
        self.resolver = QueueSettingsResolver(self.defaults, rules)
        logger.info("per-queue settings loaded: %d row(s)", len(rules))
        broker = self._broker
        if broker is not None and broker.loop is not None and not broker.loop.is_closed():
            try:
                broker.loop.call_soon_threadsafe(broker.registry.reload_settings, self.resolver)
            except RuntimeError:  # the loop closed in between: nothing left to update
                pass
        return True

    def poke(self) -> None:
        """Read the table now rather than at the next poll (a row was saved in this process)."""
        self._wake.set()

    def attach(self, broker: "Broker") -> Callable[[], None]:
        """Follow the table for ``broker`` from a thread; return :meth:`stop`. Does not block."""
        from django.db.models.signals import post_delete, post_save

        from .models import QueueSetting

        self._broker = broker
        if broker.loop is not None and broker.registry.queue_settings is not self.resolver:
            broker.loop.call_soon_threadsafe(broker.registry.reload_settings, self.resolver)
        for signal in (post_save, post_delete):
            signal.connect(self._saved, sender=QueueSetting, weak=False, dispatch_uid=id(self))
        self._thread = threading.Thread(target=self._run, name="coremq-queue-settings", daemon=True)
        self._thread.start()
        return self.stop

    def stop(self, timeout: float = 2.0) -> None:
        """Stop following the table; idempotent."""
        from django.db.models.signals import post_delete, post_save

        from .models import QueueSetting

        self._stopping.set()
        self._wake.set()
        for signal in (post_save, post_delete):
            signal.disconnect(sender=QueueSetting, dispatch_uid=id(self))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _saved(self, **kwargs: Any) -> None:
        from django.db import transaction

        transaction.on_commit(self.poke, using=kwargs.get("using"))

    def _run(self) -> None:
        from django.db import connections

        try:
            while not self._stopping.is_set():
                self._wake.wait(self.interval)
                self._wake.clear()
                if not self._stopping.is_set():
                    self.check()
        finally:
            connections.close_all()  # this thread's connections only
