"""Per-queue settings: the resolver's precedence, the model's rules, and the watcher feeding a live broker."""

from __future__ import annotations

import threading

import pytest
from django.core.exceptions import ValidationError

from coremq_broker.core.config import BrokerConfig
from coremq_broker.models import QueueSetting
from coremq_broker.queue_settings import (
    QueueRule,
    QueueSettingsResolver,
    QueueSettingsWatcher,
    default_queue_settings,
    load_rules,
)
from coremq_broker.core.registry import QueueSettings
from wire import RawClient

DEFAULTS = QueueSettings(10, slow_consumer_policy="disconnect")


@pytest.fixture
def broker_config(tmp_path) -> BrokerConfig:
    """The ``broker`` fixture's configuration, its durable history in a temporary file."""
    return BrokerConfig(port=0, shutdown_timeout=2.0, durable_path=str(tmp_path / "history.sqlite3"))


def rule(pattern: str, **overrides: object) -> QueueRule:
    return QueueRule(pattern, tuple(sorted(overrides.items())))


def test_no_rules_means_the_defaults() -> None:
    """A queue that no row matches gets settings.COREMQ's values."""
    assert QueueSettingsResolver(DEFAULTS)("anything") == DEFAULTS
    config = BrokerConfig(history_length=7, slow_consumer_policy="drop")
    assert default_queue_settings(config) == QueueSettings(7, None, "drop")


def test_exact_name_beats_globs() -> None:
    """The row naming the queue exactly wins over any glob that also matches it."""
    resolver = QueueSettingsResolver(DEFAULTS, [rule("orders*", history_length=5), rule("orders", history_length=2)])
    assert resolver("orders").history_length == 2
    assert resolver("orders.eu").history_length == 5
    assert resolver("news").history_length == 10


def test_more_literal_glob_wins_then_pattern_order() -> None:
    """Among globs the one with more literal characters wins; a tie goes to the pattern that sorts first."""
    resolver = QueueSettingsResolver(DEFAULTS, [
        rule("*", history_length=1), rule("orders.*", history_length=3), rule("orders.e?", history_length=4),
        rule("b*", history_length=6), rule("?b", history_length=7),
    ])
    assert resolver("orders.eu").history_length == 4   # 8 literal characters beat 7
    assert resolver("orders.asia").history_length == 3
    assert resolver("x").history_length == 1
    assert resolver("bb").history_length == 7          # "?b" and "b*" tie on one literal; "?b" sorts first


def test_fields_cascade_from_less_specific_rows() -> None:
    """Each field comes from the most specific row that sets it, so a '*' row is a default others refine."""
    resolver = QueueSettingsResolver(DEFAULTS, [
        rule("*", max_message_size=1000, slow_consumer_policy="drop"),
        rule("big.*", max_message_size=100_000),
        rule("big.one", history_length=50),
    ])
    assert resolver("big.one") == QueueSettings(50, 100_000, "drop")
    assert resolver("small") == QueueSettings(10, 1000, "drop")


def test_globs_are_case_sensitive_like_queue_names() -> None:
    """'Orders*' does not match 'orders': queue names are case-sensitive."""
    resolver = QueueSettingsResolver(DEFAULTS, [rule("Orders*", history_length=1)])
    assert resolver("orders").history_length == 10
    assert resolver("Orders.x").history_length == 1


@pytest.mark.django_db
def test_model_rows_become_rules() -> None:
    """A row's empty fields are left out of its rule, so they fall through to the next match."""
    QueueSetting.objects.create(pattern="orders", history_length=3)
    QueueSetting.objects.create(pattern="*", max_message_size=512, slow_consumer_policy="drop")
    assert load_rules() == (
        rule("*", max_message_size=512, slow_consumer_policy="drop"),
        rule("orders", history_length=3),
    )


@pytest.mark.django_db
def test_pattern_follows_queue_name_rules() -> None:
    """A pattern with whitespace, or a zero message size, is a validation error in the admin form."""
    with pytest.raises(ValidationError) as error:
        QueueSetting(pattern="has space", max_message_size=0).full_clean()
    assert set(error.value.message_dict) == {"pattern", "max_message_size"}
    QueueSetting(pattern="sensor-[0-9]*", history_length=0).full_clean()


@pytest.mark.django_db
def test_watcher_changes_a_running_brokers_history(broker) -> None:
    """A changed row, read by the watcher's check, re-sizes the live queue on the broker's loop."""
    watcher = QueueSettingsWatcher(BrokerConfig(history_length=10))
    broker.call(lambda: broker.broker.registry.reload_settings(watcher.resolver))
    watcher._broker = broker.broker  # attach() without starting the thread: check() is driven by the test
    client = RawClient(broker.host, broker.port)
    for n in range(6):
        client.send("orders", {"n": n})
        client.read()
    assert broker.call(lambda: broker.broker.registry.queues["orders"].history.maxlen) == 10

    QueueSetting.objects.create(pattern="orders", history_length=3)
    assert watcher.check() is True
    # broker.call runs after the reload that check() handed to the loop.
    history = broker.call(lambda: broker.broker.registry.queues["orders"].history)
    assert history.maxlen == 3
    assert [entry[0] for entry in history] == [4, 5, 6]   # the newest kept
    assert watcher.check() is False                    # nothing changed since


def test_watcher_survives_an_unreadable_table() -> None:
    """A table that cannot be read (not migrated) leaves the defaults and is tried again later."""
    calls = []

    def load() -> tuple[QueueRule, ...]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("no such table: coremq_broker_queuesetting")
        return (rule("q", history_length=2),)

    watcher = QueueSettingsWatcher(BrokerConfig(), load=load)
    assert watcher.resolver("q").history_length == 10
    assert watcher.check() is True
    assert watcher.resolver("q").history_length == 2


@pytest.mark.django_db(transaction=True)
def test_watcher_thread_follows_saves(broker) -> None:
    """Attached to a broker, the watcher's thread applies a saved row without being asked."""
    watcher = QueueSettingsWatcher(BrokerConfig(history_length=10), interval=0.05)
    stop = watcher.attach(broker.broker)
    try:
        applied = threading.Event()
        original = watcher.check

        def check(**options: bool) -> bool:
            changed = original(**options)
            if changed:
                applied.set()
            return changed

        watcher.check = check  # type: ignore[method-assign]
        QueueSetting.objects.create(pattern="watched", history_length=4)
        assert applied.wait(30)
        assert broker.call(lambda: broker.broker.registry.queue("watched").history.maxlen) == 4
    finally:
        stop()


@pytest.mark.django_db
def test_a_durable_row_makes_the_queue_durable(broker, tmp_path) -> None:
    """A row with durable set makes a live queue write to disk, and a publish is acknowledged once written."""
    from coremq_broker.core.durable import HistoryStore

    watcher = QueueSettingsWatcher(BrokerConfig())
    watcher._broker = broker.broker  # attach() without starting the thread: check() is driven by the test
    QueueSetting.objects.create(pattern="ledger.*", durable=True)
    assert watcher.check() is True
    path = broker.broker.config.durable_path
    client = RawClient(broker.host, broker.port)
    for queue in ("ledger.eu", "scratch"):
        client.send(queue, {"n": 1})
        assert client.read()[1]["response"] == "OK: Message sent"
    assert broker.call(lambda: broker.broker.registry.queues["ledger.eu"].settings.durable) is True
    assert list(HistoryStore(path).load()) == ["ledger.eu"]


@pytest.mark.django_db
def test_polls_load_only_when_something_changed() -> None:
    """A poll reads the change counter and loads the rows only after a save moved it."""
    loads = []

    def load() -> tuple[QueueRule, ...]:
        loads.append(1)
        return load_rules()

    watcher = QueueSettingsWatcher(BrokerConfig(), load=load)
    assert len(loads) == 1  # made: one full load, which also reads the fingerprint
    assert watcher.check(force=False) is False and len(loads) == 1  # nothing moved: no load
    QueueSetting.objects.create(pattern="moved", history_length=2)
    assert watcher.check(force=False) is True and len(loads) == 2
    assert watcher.resolver("moved").history_length == 2
