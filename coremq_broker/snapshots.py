"""Database tables followed by a thread and handed to a running broker as immutable snapshots.

The broker never reads the database. What it needs from there (per-queue
settings, the access policy) is loaded by a :class:`SnapshotWatcher`:

- ``load()`` reads the rows and returns an immutable snapshot that compares by
  value. It runs in the watcher's own thread (and once, blocking, when the
  watcher is made), never on the event loop;
- every ``interval`` seconds (0.5) the thread reads a *fingerprint*: the
  :class:`~coremq_broker.models.ChangeCounter`, which model signals bump in
  every process that saves through the ORM (plus, for the access policy, the
  number of tokens expired by now). Only when it moved does ``load()`` run
  again, and a snapshot equal to the last one is ignored. Loading takes
  milliseconds of Python that hold the GIL from the event loop (measured: it
  tripled the p99 latency under load when it ran on every poll); the
  fingerprint is one small query. A full load still runs every ``full_every``
  seconds (30), for changes made around the ORM. A save or delete of one of
  the ``senders`` models in this process (the admin under ``run_coremq``)
  wakes the thread at once, after the transaction commits. So a change
  reaches the broker within a second either way;
- a new snapshot is passed to the loop with
  ``call_soon_threadsafe(apply, target, snapshot)``; the target is the broker,
  or anything else that lives on a loop (a remote WebSocket bridge's copy of
  the access policy).

A load that fails (a table not migrated yet, a database that is down) keeps
the last snapshot, with one warning per distinct error, and is tried again at
the next poll.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, Generic, Iterable, Protocol, TypeVar

__all__ = ["SnapshotWatcher", "Target", "change_count", "count_changes_of"]

logger = logging.getLogger("coremq.snapshots")

T = TypeVar("T")

_UNSET: Any = object()


class Target(Protocol):
    """What a snapshot is applied to: it lives on ``loop`` (a :class:`~coremq_broker.core.broker.Broker` does)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...


TargetT = TypeVar("TargetT", bound=Target)


class SnapshotWatcher(Generic[T, TargetT]):
    """Keeps a running broker in step with a snapshot loaded from the database.

    Create it where blocking is fine (``run_coremq``'s ``handle``): it loads
    once, so that :attr:`snapshot` can be given to the Broker (``initial`` if
    that load fails). Then :meth:`attach` (``server.run``'s ``on_start``
    hook) starts the thread and returns :meth:`stop`. ``what`` names the
    snapshot in log lines, ``describe(snapshot)`` sums one up.
    """

    def __init__(self, load: Callable[[], T], apply: Callable[[TargetT, T], None], *, initial: T,
                 what: str, describe: Callable[[T], str] = repr, interval: float = 0.5,
                 senders: Iterable[type] = (), fingerprint: Callable[[], Any] | None = None,
                 full_every: float = 30.0) -> None:
        self.interval = interval
        self.full_every = full_every
        self._fingerprint = fingerprint
        self._last_fingerprint: Any = _UNSET
        self._last_full = 0.0
        self.what = what
        self.describe = describe
        self.snapshot: T = initial
        self._load = load
        self._apply = apply
        self._senders = tuple(senders)
        self._loaded: T = _UNSET
        self._last_error: str | None = None
        self._broker: TargetT | None = None  # what attach() was given
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.check()

    def check(self, *, force: bool = True) -> bool:
        """Load; if the snapshot changed, keep it and hand it to the broker. Blocking.

        Without ``force`` (the thread's polls), load only if the fingerprint
        moved or the last full load is ``full_every`` seconds old. Returns True
        when the snapshot changed.
        """
        if not force and self._fingerprint is not None:
            try:
                fingerprint = self._fingerprint()
            except Exception:  # noqa: BLE001 - then a full load says what is wrong
                fingerprint = _UNSET
            stale = time.monotonic() - self._last_full >= self.full_every
            if fingerprint is not _UNSET and fingerprint == self._last_fingerprint and not stale:
                return False
            self._last_fingerprint = fingerprint
        elif self._fingerprint is not None:
            try:
                self._last_fingerprint = self._fingerprint()
            except Exception:  # noqa: BLE001
                self._last_fingerprint = _UNSET
        self._last_full = time.monotonic()
        try:
            snapshot = self._load()
        except Exception as exc:  # DatabaseError, but also a broken row: keep the broker running
            if str(exc) != self._last_error:
                logger.warning("%s cannot be read (%s); the broker keeps the last it had", self.what, exc)
                self._last_error = str(exc)
            return False
        self._last_error = None
        if self._loaded is not _UNSET and snapshot == self._loaded:
            return False
        self._loaded = self.snapshot = snapshot
        logger.info("%s loaded: %s", self.what, self.describe(snapshot))
        self._hand_over(snapshot)
        return True

    def _hand_over(self, snapshot: T) -> None:
        broker = self._broker
        if broker is not None and broker.loop is not None and not broker.loop.is_closed():
            try:
                broker.loop.call_soon_threadsafe(self._apply, broker, snapshot)
            except RuntimeError:  # the loop closed in between: nothing left to update
                pass

    def poke(self) -> None:
        """Load now rather than at the next poll (a row was saved in this process)."""
        self._wake.set()

    def attach(self, broker: TargetT) -> Callable[[], None]:
        """Follow the tables for ``broker`` (a target) from a thread; return :meth:`stop`. Does not block.

        Call it on the target's loop, once the loop runs (``Broker.start`` has set ``broker.loop``).
        """
        self._broker = broker
        self._hand_over(self.snapshot)
        for signal, sender in self._signals():
            signal.connect(self._saved, sender=sender, weak=False, dispatch_uid=id(self))
        self._thread = threading.Thread(target=self._run, name=f"coremq-{self.what.replace(' ', '-')}",
                                        daemon=True)
        self._thread.start()
        return self.stop

    def stop(self, timeout: float = 2.0) -> None:
        """Stop following the tables; idempotent."""
        self._stopping.set()
        self._wake.set()
        for signal, sender in self._signals():
            signal.disconnect(sender=sender, dispatch_uid=id(self))
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _signals(self) -> list[tuple[Any, type]]:
        from django.db.models.signals import m2m_changed, post_delete, post_save

        # m2m_changed only ever fires for the "through" models among the senders.
        return [(signal, sender) for sender in self._senders for signal in (post_save, post_delete, m2m_changed)]

    def _saved(self, **kwargs: Any) -> None:
        from django.db import transaction

        transaction.on_commit(self.poke, using=kwargs.get("using"))

    def _run(self) -> None:
        from django.db import connections

        try:
            while not self._stopping.is_set():
                poked = self._wake.wait(self.interval)
                self._wake.clear()
                if not self._stopping.is_set():
                    self.check(force=poked)
        finally:
            connections.close_all()  # this thread's connections only


def change_count() -> int | None:
    """The :class:`~coremq_broker.models.ChangeCounter`'s value, in one small query (None: no row yet)."""
    from django.db import connection

    from .models import ChangeCounter

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT value FROM {ChangeCounter._meta.db_table} WHERE id = 1")
        row = cursor.fetchone()
    return None if row is None else int(row[0])


def _bump(**kwargs: Any) -> None:
    if kwargs.get("action", "post_").startswith("pre_"):
        return  # m2m_changed fires before and after; count the change once
    from django.db.models import F

    from .models import ChangeCounter

    using = kwargs.get("using")
    if not ChangeCounter.objects.using(using).filter(pk=1).update(value=F("value") + 1):
        ChangeCounter.objects.using(using).get_or_create(pk=1, defaults={"value": 1})


def count_changes_of(senders: Iterable[type]) -> None:
    """Bump the change counter whenever one of ``senders`` is saved, deleted or its relations change.

    Connected once per process (``AppConfig.ready``), so that changes made by
    any process reach the brokers' watchers at their next poll.
    """
    from django.db.models.signals import m2m_changed, post_delete, post_save

    for sender in senders:
        for signal in (post_save, post_delete, m2m_changed):
            signal.connect(_bump, sender=sender, weak=False, dispatch_uid=f"coremq-count-{sender._meta.label}-{id(signal)}")
