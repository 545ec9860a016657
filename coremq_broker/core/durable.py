"""Durable history: an embedded SQLite database in WAL mode, written off the event loop.

A durable queue's message is written by :class:`HistoryStore`'s writer thread;
only when its transaction has committed does the broker keep it in memory,
deliver it and acknowledge it. A process killed with ``kill -9`` loses no
acknowledged message: in WAL mode a committed transaction is in the
operating system's hands (``synchronous=NORMAL``; ``FULL`` also survives a
power cut, at an fsync per batch). Writes that arrive while a commit is in
progress go in the next batch, so a busy durable queue costs one commit per
batch, not per message; queues that are not durable never wait for it.

When the disk refuses a write (full, read-only, gone), the transaction is
rolled back and each write in it, and each write queued behind it, is failed:
the broker answers it ``ERROR: durable history unavailable: <reason>`` and
neither keeps nor delivers the message. The store is then *unavailable*: the
broker refuses durable publishes at once instead of queueing them, and the
writer retries with a one-row probe transaction after 0.1 s, then at doubling
intervals up to ``retry_max``; the first probe that commits makes the store
available again. Each change of state is logged once and counted
(:meth:`HistoryStore.describe`, the status page). Writes in flight are
bounded too (``max_pending`` writes, ``max_pending_bytes`` bytes): past
either, a durable publish is refused at once rather than held in memory.

Ids stay gap-free: the writes that fail are always the newest of their queue
(every write after a failed one fails too), so the broker gives their ids
back (``on_rewind``) and the next stored message takes the first of them.

Threads: the writer thread owns the SQLite connection and its retry state;
everything else here (the counters, :meth:`refusal`, :meth:`write`) belongs to
the event loop, which the writer reaches only through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue as queue_module
import sqlite3
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

__all__ = ["HistoryStore", "StoredHistory", "DurableHistoryError", "unwritable", "UNAVAILABLE"]

logger = logging.getLogger("coremq.durable")

#: The start of every refusal's text: ``ERROR: durable history unavailable: <reason>``.
UNAVAILABLE = "durable history unavailable"

#: One write: queue name, message id, the stored JSON, the loop's callbacks on
#: commit and on failure (with the reason), and the epoch it was queued in; a
#: message id of 0 with no body purges the queue.
Write = tuple[str, int, bytes, Callable[[], None], Callable[[str], None], int]
#: What a store holds at start: queue name -> [(id, stored JSON), ...] oldest first.
StoredHistory = dict[str, list[tuple[int, bytes]]]

#: Seconds before the first retry after a failure; each failed retry doubles it, up to ``retry_max``.
FIRST_RETRY = 0.1

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS history (
        queue TEXT NOT NULL,
        id INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (queue, id)
    ) WITHOUT ROWID
    """,
    # One row, rewritten by the retries of an unavailable store: a real commit that stores nothing.
    "CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)",
)

_RETRY = object()  # the writer's wait for writes timed out: time to retry


class DurableHistoryError(OSError):
    """The durable history file exists but cannot be read: the broker cannot start on it."""


def unwritable(path: str) -> str | None:
    """Why SQLite could not write the durable history at ``path``, or None if nothing says so.

    It writes nothing: the file, if there, is opened for writing and closed;
    a nameless temporary file is made and dropped in its directory, where
    SQLite keeps its ``-wal`` and ``-shm`` files. A full disk is not caught
    here (it can fill up any time); the running store reports that.
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"directory {directory} does not exist"
    if os.path.isdir(path):
        return f"{path} is a directory"
    if os.path.exists(path):
        try:
            open(path, "r+b").close()
        except OSError as exc:
            return f"cannot write {path}: {exc.strerror or exc}"
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:
        return f"cannot create files in {directory}: {exc.strerror or exc}"
    return None


class _WriterState:
    """What the writer thread alone reads and changes."""

    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None
        self.epoch = 0  # raised at each failure; writes queued in an older epoch fail
        self.reason: str | None = None  # why the store is unavailable now; None: it is available
        self.last_reason = ""  # why it was last unavailable (for writes that fail late)
        self.delay = FIRST_RETRY
        self.retry_at = 0.0
        self.unpruned: dict[str, int] = {}  # writes per queue since its history was last trimmed
        self.purges: set[str] = set()  # queues whose purge failed: done by the retry that recovers


class HistoryStore:
    """The durable history of every durable queue, in one SQLite file."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL", keep: Callable[[str], int] = lambda q: 10,
                 max_pending: int = 10_000, max_pending_bytes: int = 64 * 2**20, retry_max: float = 2.0,
                 on_rewind: Callable[[dict[str, tuple[int, int]]], None] | None = None) -> None:
        self.path = path
        self.synchronous = synchronous
        self.keep = keep  # how many messages to keep for a queue
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.retry_max = retry_max
        #: Called on the loop with ``{queue: (first, last)}``, the ids of the writes in flight when
        #: the store failed: none of them will be stored.
        self.on_rewind = on_rewind
        self._writes: queue_module.SimpleQueue[Write | None] = queue_module.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # The loop's side.
        self.error: str | None = None  # why the store is unavailable; None while it is available
        self.since: float | None = None  # when it became unavailable
        self.epoch = 0
        self.pending = 0  # writes queued and not yet committed or failed
        self.pending_bytes = 0
        self.committed = 0  # messages committed
        self.failed = 0  # messages whose write failed
        self.refused = 0  # publishes refused without a write (unavailable, or too many writes pending)
        self.outages = 0  # times the store became unavailable
        self.last_commit: float | None = None
        self._refused_before = 0  # ``refused`` when the current outage began
        self._backlogged = False  # refusing because too many writes are pending
        self._in_flight: dict[str, list[int]] = {}  # queue -> [first, last] ids written and not yet committed

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            for statement in _SCHEMA:
                db.execute(statement)
        except BaseException:
            db.close()
            raise
        return db

    def load(self) -> StoredHistory:
        """Read what the file holds (blocking: call it in an executor); raise :class:`DurableHistoryError`.

        A file that SQLite can open read-only only (its permissions) is read
        so, and the writer then reports why it cannot write. On a read-only
        disk SQLite cannot open a WAL database at all (it needs its ``-shm``
        file): that raises, rather than start with the numbering back at 1.
        """
        try:
            db = self._connect()
        except sqlite3.Error as exc:
            try:
                db = sqlite3.connect(Path(self.path).absolute().as_uri() + "?mode=ro", uri=True,
                                     check_same_thread=False)
                db.execute("SELECT count(*) FROM history").fetchone()
            except sqlite3.Error:
                raise DurableHistoryError(f"cannot read the durable history {self.path}: {_reason(exc, self.path)}"
                                          ) from exc
        try:
            history: StoredHistory = defaultdict(list)
            for name, message_id, body in db.execute("SELECT queue, id, body FROM history ORDER BY queue, id"):
                history[name].append((message_id, bytes(body)))
            return dict(history)
        except sqlite3.Error as exc:
            raise DurableHistoryError(f"cannot read the durable history {self.path}: {exc}") from exc
        finally:
            db.close()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread; completions are called back on ``loop``."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="coremq-durable-writer", daemon=True)
        self._thread.start()

    # -- the loop's side -------------------------------------------------

    def refusal(self) -> str | None:
        """Why a durable publish must be refused now, without a write (an ``ERROR:``'s text), or None.

        Counted as refused when it is not None.
        """
        if self.error is not None:
            self.refused += 1
            return f"{UNAVAILABLE}: {self.error}"
        if self.pending and (self.pending >= self.max_pending or self.pending_bytes >= self.max_pending_bytes):
            self.refused += 1
            if not self._backlogged:
                self._backlogged = True
                logger.warning("durable history: %d writes (%d bytes) wait for the disk; durable publishes are "
                               "refused until they drop below half the limit", self.pending, self.pending_bytes)
            return (f"{UNAVAILABLE}: {self.pending} writes ({self.pending_bytes} bytes) are waiting for the disk, "
                    f"limit is {self.max_pending} writes or {self.max_pending_bytes} bytes")
        return None

    def write(self, name: str, message_id: int, body: bytes, done: Callable[[], None],
              failed: Callable[[str], None]) -> None:
        """Queue a write; ``done()`` runs on the loop once it is committed, ``failed(reason)`` if it cannot be."""
        self.pending += 1
        self.pending_bytes += len(body)
        span = self._in_flight.get(name)
        if span is None:
            self._in_flight[name] = [message_id, message_id]
        else:
            span[1] = message_id
        self._writes.put((name, message_id, body, done, failed, self.epoch))

    def purge(self, name: str) -> None:
        """Forget a queue's durable history (after the writes queued before this)."""

        def failed(reason: str) -> None:
            logger.warning("durable history: the purge of queue %r waits until the disk takes writes again: %s",
                           name, reason)

        self.pending += 1
        self._writes.put((name, 0, b"", _nothing, failed, self.epoch))

    def describe(self) -> dict[str, Any]:
        """The store's state for the status page: ``state`` is ``"ok"`` or ``"unavailable"`` (with ``error``)."""
        return {
            "state": "ok" if self.error is None else "unavailable",
            "error": self.error,
            "since": self.since,
            "path": self.path,
            "pending": self.pending,
            "pending_bytes": self.pending_bytes,
            "max_pending": self.max_pending,
            "max_pending_bytes": self.max_pending_bytes,
            "committed": self.committed,
            "failed": self.failed,
            "refused": self.refused,
            "outages": self.outages,
            "last_commit": self.last_commit,
            "free_bytes": free_bytes(self.path),
        }

    def _completed(self, batch: list[Write], reason: str | None, epoch: int) -> None:
        """On the loop: ``batch`` committed (``reason`` None) or failed in the writer's ``epoch``."""
        self.pending -= len(batch)
        self.pending_bytes -= sum(len(write[2]) for write in batch)
        if reason is None:
            self._committed(batch)
            return
        if epoch > self.epoch:
            self._became_unavailable(reason, epoch)
        for name, message_id, _, _, failed, _ in batch:
            if message_id:
                self.failed += 1
            try:
                failed(reason)
            except Exception:  # one failing reply must not stop the others
                logger.exception("durable history: answering a failed write failed")

    def _committed(self, batch: list[Write]) -> None:
        in_flight = self._in_flight
        for name, message_id, *_ in batch:
            span = in_flight.get(name)
            if message_id and span is not None:
                if message_id >= span[1]:
                    del in_flight[name]
                else:
                    span[0] = message_id + 1
        self.committed += sum(1 for write in batch if write[1])
        self.last_commit = time.time()
        if self._backlogged and self.pending <= self.max_pending // 2 and self.pending_bytes <= (
                self.max_pending_bytes // 2):
            self._backlogged = False
            logger.info("durable history: the writes waiting for the disk are below half the limit again")
        _run_all([write[3] for write in batch])

    def _became_unavailable(self, reason: str, epoch: int) -> None:
        self.epoch = epoch
        if self.error is None:
            self.outages += 1
            self.since = time.time()
            self._refused_before = self.refused
            logger.error("%s: %s (%s); durable publishes are refused until a write succeeds again "
                         "(retried every %.1f s at most)", UNAVAILABLE, reason, self.path, self.retry_max)
        self.error = reason
        rewind, self._in_flight = self._in_flight, {}
        if rewind and self.on_rewind is not None:
            self.on_rewind({name: (first, last) for name, (first, last) in rewind.items()})

    def _still_unavailable(self, reason: str) -> None:
        if self.error is not None and reason != self.error:
            logger.warning("%s: now %s (%s)", UNAVAILABLE, reason, self.path)
            self.error = reason

    def _recovered(self, epoch: int) -> None:
        if self.error is None:
            return
        logger.warning("durable history available again after %.1f s (%s); %d durable publish(es) were refused "
                       "meanwhile", time.time() - (self.since or time.time()), self.path,
                       self.refused - self._refused_before)
        self.error = None
        self.since = None
        self.epoch = max(self.epoch, epoch)

    def _notify(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    # -- the writer thread -----------------------------------------------

    def close(self) -> None:
        """Commit what is queued and stop the writer (blocking)."""
        if self._thread is not None:
            self._writes.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        state = _WriterState()
        try:
            state.db = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._fail(state, [], _reason(exc, self.path))
        try:
            stop = False
            while not stop:
                batch, stop = self._next_batch(state)
                if batch:
                    self._handle(state, batch)
        finally:
            for name in state.purges:
                logger.error("durable history: the purge of queue %r was never written (the disk failed until the "
                             "broker stopped); its old history will come back at the next start", name)
            if state.db is not None:
                state.db.close()

    def _next_batch(self, state: _WriterState) -> tuple[list[Write], bool]:
        """Every write queued now (waiting for the first) and whether to stop after them.

        While the store is unavailable, the wait ends at the next retry's time.
        """
        while True:
            timeout = None if state.reason is None else max(0.0, state.retry_at - time.monotonic())
            try:
                item = self._writes.get(timeout=timeout)
            except queue_module.Empty:
                self._retry(state)
                continue
            break
        batch: list[Write] = []
        while item is not None:
            batch.append(item)
            try:
                item = self._writes.get_nowait()
            except queue_module.Empty:
                return batch, False
        return batch, True

    def _handle(self, state: _WriterState, batch: list[Write]) -> None:
        # Messages queued before the loop knew of a failure fail too: one stored after a failed one
        # would leave a hole in the ids. Purges are kept while the disk fails, and done first thing
        # when it recovers (``_retry``).
        if state.reason is not None:
            stale, batch = batch, []
        else:
            stale = [write for write in batch if write[1] and write[5] < state.epoch]
            if stale:
                batch = [write for write in batch if not (write[1] and write[5] < state.epoch)]
        if stale:
            state.purges.update(write[0] for write in stale if not write[1])
            self._notify(self._completed, stale, state.reason or state.last_reason, state.epoch)
        if not batch:
            return
        try:
            if state.db is None:
                state.db = self._connect()
            self._commit(state, batch)
        except Exception as exc:  # the disk's errors, and any other: the writer must not die of it
            if not isinstance(exc, (sqlite3.Error, OSError)):
                logger.exception("durable history: unexpected error in a commit")
            self._fail(state, batch, _reason(exc, self.path))
        else:
            state.delay = FIRST_RETRY
            self._notify(self._completed, batch, None, state.epoch)

    def _commit(self, state: _WriterState, batch: list[Write]) -> None:
        db = state.db
        assert db is not None
        newest: dict[str, int] = {}
        written: dict[str, int] = {}
        rows: list[Any] = []  # the values of the messages since the last purge, flattened
        db.execute("BEGIN")
        for name, message_id, body, *_ in batch:
            if message_id:
                rows += (name, message_id, body)
                newest[name] = message_id
                written[name] = written.get(name, 0) + 1
            else:
                _insert(db, rows)
                rows = []
                db.execute("DELETE FROM history WHERE queue = ?", (name,))
        _insert(db, rows)
        trimmed = []
        for name, count in written.items():
            keep = self.keep(name)
            if state.unpruned.get(name, 0) + count >= max(keep, 100):  # trim now and then, not on every write
                db.execute("DELETE FROM history WHERE queue = ? AND id <= ?", (name, newest[name] - keep))
                trimmed.append(name)
        db.execute("COMMIT")
        for name, count in written.items():
            state.unpruned[name] = state.unpruned.get(name, 0) + count
        for name in trimmed:
            state.unpruned[name] = 0

    def _fail(self, state: _WriterState, batch: list[Write], reason: str) -> None:
        """The store is unavailable from now on: fail ``batch`` and plan the first retry."""
        self._rollback(state)
        state.purges.update(write[0] for write in batch if not write[1])
        state.epoch += 1
        state.reason = state.last_reason = reason
        state.retry_at = time.monotonic() + state.delay
        self._notify(self._completed, batch, reason, state.epoch)

    def _retry(self, state: _WriterState) -> None:
        """Try a one-row transaction; if it commits, the store is available again."""
        try:
            if state.db is None:
                state.db = self._connect()
            state.db.execute("BEGIN")
            state.db.execute("INSERT OR REPLACE INTO probe (id, at) VALUES (1, ?)", (time.time(),))
            for name in state.purges:  # before any write that follows them
                state.db.execute("DELETE FROM history WHERE queue = ?", (name,))
            state.db.execute("COMMIT")
        except Exception as exc:  # as in _handle: whatever it is, retry later
            self._rollback(state)
            reason = _reason(exc, self.path)
            state.delay = min(state.delay * 2, self.retry_max)
            state.retry_at = time.monotonic() + state.delay
            if reason != state.reason:
                state.reason = state.last_reason = reason
                self._notify(self._still_unavailable, reason)
            return
        state.reason = None
        state.purges.clear()
        self._notify(self._recovered, state.epoch)

    @staticmethod
    def _rollback(state: _WriterState) -> None:
        db = state.db
        if db is None or not db.in_transaction:
            return
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:  # the connection is beyond use: open a new one at the next try
            db.close()
            state.db = None


#: Messages per INSERT statement (three values each, under SQLite's 32,766 parameters).
_ROWS_PER_INSERT = 500


def _insert(db: sqlite3.Connection, values: list[Any]) -> None:
    """Insert the rows whose values ``values`` holds, flattened, a few hundred per statement.

    One statement per message would hand the GIL back and forth once per
    message, and each time the writer thread waits for the event loop's
    thread to let go of it: a busy broker would keep the writer, and the news
    of a failed commit, waiting for seconds.
    """
    step = 3 * _ROWS_PER_INSERT
    for start in range(0, len(values), step):
        chunk = values[start:start + step]
        db.execute("INSERT OR REPLACE INTO history (queue, id, body) VALUES "
                   + ",".join(["(?,?,?)"] * (len(chunk) // 3)), chunk)


def free_bytes(path: str) -> int | None:
    """Bytes free to an unprivileged user on the file system of ``path``'s directory, or None."""
    try:
        stat = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _reason(exc: BaseException, path: str) -> str:
    """The text of a failure, with what the file system says when SQLite says little."""
    reason = str(exc) or type(exc).__name__
    if "unable to open" in reason or "readonly" in reason:
        problem = unwritable(path)
        if problem is not None:
            reason = f"{reason} ({problem})"
    return reason


def _nothing() -> None:
    pass


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # one failing delivery must not stop the others
            logger.exception("durable delivery failed")
