"""Durable history: an embedded SQLite database in WAL mode, written off the event loop.

A durable queue's message is written by :class:`HistoryStore`'s writer thread;
only when its transaction has committed does the broker keep it in memory,
deliver it and acknowledge it. A process killed with ``kill -9`` loses no
acknowledged message: in WAL mode a committed transaction is in the
operating system's hands (``synchronous=NORMAL``; ``FULL`` also survives a
power cut, at an fsync per batch). Writes that arrive while a commit is in
progress go in the next batch, so a busy durable queue costs one commit per
batch, not per message; queues that are not durable never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import queue as queue_module
import sqlite3
import threading
from collections import defaultdict
from typing import Callable

__all__ = ["HistoryStore", "StoredHistory"]

logger = logging.getLogger("coremq.durable")

#: One write: queue name, message id, the stored JSON, and the loop callback;
#: a message id of 0 with no body purges the queue.
Write = tuple[str, int, bytes, Callable[[], None]]
#: What a store holds at start: queue name -> [(id, stored JSON), ...] oldest first.
StoredHistory = dict[str, list[tuple[int, bytes]]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (
    queue TEXT NOT NULL,
    id INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (queue, id)
) WITHOUT ROWID
"""


class HistoryStore:
    """The durable history of every durable queue, in one SQLite file."""

    def __init__(self, path: str, *, synchronous: str = "NORMAL", keep: Callable[[str], int] = lambda q: 10) -> None:
        self.path = path
        self.synchronous = synchronous
        self.keep = keep  # how many messages to keep for a queue
        self._writes: queue_module.SimpleQueue[Write | None] = queue_module.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute(_SCHEMA)
        return db

    def load(self) -> StoredHistory:
        """Read what the file holds (blocking: call it in an executor)."""
        db = self._connect()
        try:
            history: StoredHistory = defaultdict(list)
            for name, message_id, body in db.execute("SELECT queue, id, body FROM history ORDER BY queue, id"):
                history[name].append((message_id, bytes(body)))
            return dict(history)
        finally:
            db.close()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the writer thread; completions are called back on ``loop``."""
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="coremq-durable-writer", daemon=True)
        self._thread.start()

    def write(self, name: str, message_id: int, body: bytes, done: Callable[[], None]) -> None:
        """Queue a write; ``done`` runs on the loop once it is committed."""
        self._writes.put((name, message_id, body, done))

    def purge(self, name: str) -> None:
        """Forget a queue's durable history (after the writes queued before this)."""
        self._writes.put((name, 0, b"", _nothing))

    def close(self) -> None:
        """Commit what is queued and stop the writer (blocking)."""
        if self._thread is not None:
            self._writes.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        db = self._connect()
        newest: dict[str, int] = {}
        unpruned: dict[str, int] = {}
        stop = False
        try:
            while not stop:
                batch: list[Write] = []
                item = self._writes.get()
                while item is not None:
                    batch.append(item)
                    try:
                        item = self._writes.get_nowait()
                    except queue_module.Empty:
                        break
                stop = item is None
                if batch:
                    self._commit(db, batch, newest, unpruned)
        finally:
            db.close()

    def _commit(self, db: sqlite3.Connection, batch: list[Write], newest: dict[str, int],
                unpruned: dict[str, int]) -> None:
        db.execute("BEGIN")
        for name, message_id, body, _ in batch:
            if message_id:
                db.execute("INSERT OR REPLACE INTO history (queue, id, body) VALUES (?, ?, ?)",
                           (name, message_id, body))
                newest[name] = message_id
                unpruned[name] = unpruned.get(name, 0) + 1
            else:
                db.execute("DELETE FROM history WHERE queue = ?", (name,))
        for name in {name for name, message_id, _, _ in batch if message_id}:
            keep = self.keep(name)
            if unpruned[name] >= max(keep, 100):  # trim now and then, not on every write
                db.execute("DELETE FROM history WHERE queue = ? AND id <= ?", (name, newest[name] - keep))
                unpruned[name] = 0
        db.execute("COMMIT")
        assert self._loop is not None
        callbacks = [done for _, _, _, done in batch]
        self._loop.call_soon_threadsafe(_run_all, callbacks)


def _nothing() -> None:
    pass


def _run_all(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # one failing delivery must not stop the others
            logger.exception("durable delivery failed")
