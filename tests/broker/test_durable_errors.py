"""Durable history on a disk that fails: full or read-only tmpfs mounts, a real broker, real sockets.

A failed write is answered ``ERROR: durable history unavailable: <reason>``,
nothing unstored is delivered, ids stay gap-free, writes in flight are
bounded, and the store recovers by itself once the disk takes writes again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from brokers import BrokerThread
from coremq_broker import start
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.durable import DurableHistoryError, HistoryStore, unwritable
from coremq_broker.core.registry import QueueSettings
from disks import fill, mounted_tmpfs, remount
from wire import RawClient

UNAVAILABLE = "ERROR: durable history unavailable: "


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs."""
    with mounted_tmpfs(tmp_path / "disk", size="2m") as disk:
        yield disk


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty read-only tmpfs (root writes through chmod, not through a read-only mount)."""
    with mounted_tmpfs(tmp_path / "ro", size="1m", read_only=True) as disk:
        yield disk


def durable_config(path: Path, **options: object) -> BrokerConfig:
    values = dict(host="127.0.0.1", port=0, durable_all=True, durable_path=str(path), history_length=1000,
                  shutdown_timeout=2.0, durable_retry_max=0.5)
    values.update(options)
    return BrokerConfig(**values)  # type: ignore[arg-type]


def durable_status(client: RawClient) -> dict:
    return client.control({"coremq_status": True})["durable"]


def wait_for_state(client: RawClient, state: str, timeout: float = 15.0) -> dict:
    """The durable status once its state is ``state``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        durable = durable_status(client)
        if durable["state"] == state:
            return durable
        if time.monotonic() > deadline:
            pytest.fail(f"the durable history did not become {state!r} within {timeout}s: {durable}")
        time.sleep(0.05)


def history(client: RawClient, queue: str) -> tuple[list[dict], dict]:
    reply = client.control({"coremq_gethistory": [queue]})
    return reply["history"][queue], reply["sequence"][queue]


def test_full_disk_fails_publishes_then_recovers_when_space_returns(small_disk: Path, caplog) -> None:
    """Full disk: ERROR replies, nothing delivered, logged once; freed: the next publish is stored with the next id."""
    caplog.set_level(logging.INFO, logger="coremq.durable")
    path = small_disk / "history.sqlite3"
    running = BrokerThread(durable_config(path))
    try:
        subscriber = RawClient(running.host, running.port)
        subscriber.control({"coremq_subscribe": ["orders"]})
        publisher = RawClient(running.host, running.port)
        for n in range(5):
            publisher.send("orders", {"n": n})
            assert publisher.read()[1]["id"] == n + 1
        assert [subscriber.read()[1]["n"] for _ in range(5)] == list(range(5))

        filler = fill(small_disk)
        for n in range(5, 8):
            publisher.send("orders", {"n": n, "pad": "x" * 10_000})
            queue, reply = publisher.read()
            assert queue == publisher.id and reply["response"].startswith(UNAVAILABLE), reply
            assert "full" in reply["response"] and reply["request"] == n + 1 and "id" not in reply
        durable = durable_status(publisher)
        assert durable["state"] == "unavailable" and "full" in durable["error"]
        # The first write reached the disk and failed; the next two were refused without queueing.
        assert (durable["failed"], durable["refused"], durable["outages"], durable["pending"]) == (1, 2, 1, 0)

        filler.unlink()
        assert wait_for_state(publisher, "ok")["outages"] == 1
        publisher.send("orders", {"n": 8})
        reply = publisher.read()[1]
        assert (reply["response"], reply["id"]) == ("OK: Message sent", 6)
        delivered = subscriber.read()[1]
        assert (delivered["n"], delivered["coremq_id"]) == (8, 6)  # 5, 6 and 7 were never delivered
        messages, sequence = history(publisher, "orders")
        assert [m["n"] for m in messages] == [0, 1, 2, 3, 4, 8] and [m["coremq_id"] for m in messages] == [1, 2, 3, 4, 5, 6]
        assert (sequence["first"], sequence["last"]) == (1, 6)

        failures = [r for r in caplog.records if r.name == "coremq.durable" and r.levelno >= logging.ERROR]
        assert len(failures) == 1 and "database or disk is full" in failures[0].getMessage()
        assert sum("available again" in r.getMessage() for r in caplog.records) == 1

        running.restart()
        client = RawClient(running.host, running.port)
        messages, sequence = history(client, "orders")
        assert [m["n"] for m in messages] == [0, 1, 2, 3, 4, 8] and (sequence["first"], sequence["last"]) == (1, 6)
        client.send("orders", {"n": 9})
        assert client.read()[1]["id"] == 7
    finally:
        running.stop()


def test_fire_and_forget_flood_on_a_full_disk_stays_bounded(small_disk: Path) -> None:
    """30,000 publishes without replies on a full disk: 30,000 ERRORs, no write held, RSS bounded, no id used up."""
    path = small_disk / "history.sqlite3"
    # At most 2,000 writes wait for the disk: those read before the broker learns that it is full.
    broker = start(port=0, durable_all=True, durable_path=str(path), log_level="ERROR", durable_max_pending=2000)
    try:
        publisher = RawClient(broker.host, broker.port, timeout=30)
        publisher.send("ticks", {"n": 0})
        assert publisher.read()[1]["id"] == 1
        filler = fill(small_disk)
        publisher.control({"coremq_options": {"reply": False}})
        rss_before = resident_kib(broker.pid)
        errors: list[str] = []

        def read_errors() -> None:
            while len(errors) < 30_000:
                errors.append(publisher.read()[1]["response"])

        reader = threading.Thread(target=read_errors)
        reader.start()
        batch = b"".join(b"+%d ticks %s" % (len(b"ticks ") + len(body), body)
                         for body in (b'{"n":%d,"pad":"%s"}' % (n, b"x" * 100) for n in range(1, 30_001)))
        publisher.send_raw(batch)
        reader.join(60)
        # Refused for the full disk, or, for those read before the broker learned of it, for the writes
        # already waiting (DURABLE_MAX_PENDING): never held beyond that.
        assert len(errors) == 30_000 and all(e.startswith(UNAVAILABLE) for e in errors)
        assert all("full" in e or "waiting for the disk" in e for e in errors) and any("full" in e for e in errors)
        durable = durable_status(publisher)
        assert durable["failed"] + durable["refused"] == 30_000 and durable["pending"] == 0
        growth_mib = (resident_kib(broker.pid) - rss_before) / 1024
        assert growth_mib < 32, f"the broker grew by {growth_mib:.1f} MiB"
        sequence = history(publisher, "ticks")[1]
        assert (sequence["first"], sequence["last"]) == (1, 1)
        # The ids of the writes that were in flight were given back: the next stored message is 2.
        filler.unlink()
        publisher.control({"coremq_options": {"reply": True}})
        wait_for_state(publisher, "ok")
        publisher.send("ticks", {"n": 30_001})
        assert publisher.read()[1]["id"] == 2
    finally:
        broker.stop()


def resident_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_writes_in_flight_are_capped_and_refused_at_once(tmp_path: Path) -> None:
    """Past DURABLE_MAX_PENDING a publish is refused with the ERROR; exactly the acknowledged ones are delivered, ids 1..n."""
    running = BrokerThread(durable_config(tmp_path / "history.sqlite3", durable_max_pending=5))
    try:
        subscriber = RawClient(running.host, running.port)
        subscriber.control({"coremq_subscribe": ["jobs"]})
        publisher = RawClient(running.host, running.port)
        publisher.send_raw(b"".join(b"+%d jobs %s" % (len(b"jobs ") + len(body), body)
                                    for body in (b'{"n":%d}' % n for n in range(2000))))
        replies = [publisher.read()[1] for _ in range(2000)]
        stored = {r["request"] - 1: r["id"] for r in replies if r["response"] == "OK: Message sent"}
        refused = [r for r in replies if r["response"].startswith(UNAVAILABLE)]
        assert len(stored) + len(refused) == 2000 and refused and stored
        assert all("waiting for the disk, limit is 5 writes" in r["response"] for r in refused)
        assert sorted(stored.values()) == list(range(1, len(stored) + 1))
        delivered = [subscriber.read()[1] for _ in range(len(stored))]
        assert [(m["n"], m["coremq_id"]) for m in delivered] == sorted(stored.items())
        assert durable_status(publisher)["refused"] == len(refused)
    finally:
        running.stop()


def test_read_only_directory_is_reported_at_start_and_recovers_when_writable(read_only_disk: Path, caplog) -> None:
    """No file on a read-only disk: the start logs the error, publishes get the ERROR at once; remounted rw, they are stored."""
    caplog.set_level(logging.INFO, logger="coremq.durable")
    path = read_only_disk / "history.sqlite3"
    assert "Read-only file system" in unwritable(str(path))
    running = BrokerThread(durable_config(path))
    try:
        client = RawClient(running.host, running.port)
        durable = wait_for_state(client, "unavailable")
        assert "Read-only file system" in durable["error"] and durable["path"] == str(path)
        assert any(r.levelno == logging.ERROR and "Read-only file system" in r.getMessage() for r in caplog.records)
        client.send("orders", {"n": 0})
        reply = client.read()[1]
        assert reply["response"].startswith(UNAVAILABLE) and "Read-only file system" in reply["response"]

        remount(read_only_disk, read_only=False)
        wait_for_state(client, "ok")
        client.send("orders", {"n": 1})
        assert client.read()[1]["id"] == 1
    finally:
        running.stop()
    saved = HistoryStore(str(path)).load()
    assert list(saved) == ["orders"] and [(i, json.loads(body)["n"]) for i, body in saved["orders"]] == [(1, 1)]


def test_durable_queue_on_a_read_only_disk_answers_instead_of_hanging(read_only_disk: Path) -> None:
    """Per-queue durability, no file, read-only disk: the durable publish gets the ERROR, other queues go on."""
    path = read_only_disk / "history.sqlite3"

    def settings(name: str) -> QueueSettings:
        return QueueSettings(10, durable=name.startswith("d."))

    running = BrokerThread(durable_config(path, durable_all=False), queue_settings=settings)
    try:
        client = RawClient(running.host, running.port)
        assert durable_status(client)["state"] == "unused"
        client.send("d.orders", {"n": 0})
        reply = client.read()[1]
        assert reply["response"].startswith(UNAVAILABLE) and "Read-only file system" in reply["response"]
        client.send("plain", {"n": 0})
        assert client.read()[1]["id"] == 1
        assert durable_status(client)["state"] == "unavailable"
    finally:
        running.stop()


def test_purge_during_an_outage_is_written_when_the_disk_recovers(small_disk: Path) -> None:
    """A purge while the disk is full is done once it recovers: after a restart the purged messages stay gone."""
    running = BrokerThread(durable_config(small_disk / "history.sqlite3"))
    try:
        client = RawClient(running.host, running.port)
        for n in range(3):
            client.send("gone", {"n": n, "pad": "x" * 5_000})
            assert client.read()[1]["id"] == n + 1
        filler = fill(small_disk)
        client.send("gone", {"n": 3, "pad": "x" * 10_000})  # fails: the store becomes unavailable
        assert client.read()[1]["response"].startswith(UNAVAILABLE)
        assert client.control({"coremq_admin": {"action": "purge", "queue": "gone"}})["purged"] == 3
        filler.unlink()
        wait_for_state(client, "ok")
        client.send("gone", {"n": 4})
        assert client.read()[1]["id"] == 4
        running.restart()
        client = RawClient(running.host, running.port)
        messages, sequence = history(client, "gone")
        assert [(m["coremq_id"], m["n"]) for m in messages] == [(4, 4)] and sequence["last"] == 4
    finally:
        running.stop()


def test_unreadable_existing_history_stops_the_start(tmp_path: Path) -> None:
    """A history file that exists but cannot be read (here: not SQLite) stops Broker.start with the reason."""
    path = tmp_path / "history.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DurableHistoryError, match="cannot read the durable history"):
        BrokerThread(durable_config(path))


def test_python_clients_see_the_refusal_and_no_gap(small_disk: Path) -> None:
    """MessageQueue: publish on a full disk raises ServerError; the subscriber then gets the next id with no gap, live and resumed."""
    from coremq_client.errors import ServerError
    from coremq_client.sync_client import MessageQueue

    running = BrokerThread(durable_config(small_disk / "history.sqlite3"))
    try:
        with MessageQueue(running.host, running.port, queues=["orders"]) as subscriber, \
                MessageQueue(running.host, running.port) as client:
            assert client.publish("orders", {"n": 0})["id"] == 1
            filler = fill(small_disk)
            with pytest.raises(ServerError) as raised:
                client.publish("orders", {"n": 1, "pad": "x" * 10_000})
            assert raised.value.reason.startswith("durable history unavailable: database or disk is full")
            filler.unlink()
            deadline = time.monotonic() + 15
            while client.status()["durable"]["state"] != "ok":
                assert time.monotonic() < deadline, "the durable history did not recover"
                time.sleep(0.05)
            assert client.publish("orders", {"n": 2})["id"] == 2
            first, second = subscriber.receive(5), subscriber.receive(5)
            assert [(d.id, d.message["n"], d.gap) for d in (first, second)] == [(1, 0, None), (2, 2, None)]

            running.restart()  # the subscriber resumes from id 2 on the restarted broker
            publisher = RawClient(running.host, running.port)
            publisher.send("orders", {"n": 3})
            assert publisher.read()[1]["id"] == 3
            third = subscriber.receive(10)
            assert (third.id, third.message["n"], third.gap) == (3, 3, None)
            assert list(subscriber.gaps) == []
    finally:
        running.stop()
