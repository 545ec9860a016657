"""The store alone (no sockets, no loop): LRU eviction under the byte cap, expiry, flush, CAS, watch events."""

from __future__ import annotations

from coremq_broker.store.store import ITEM_OVERHEAD, NOT_STORED, STORED, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_memory_cap_holds_and_evicts_least_recently_used():
    """Filling past MEMCACHED_MEMORY evicts the least recently used items; bytes never exceed the cap."""
    events = []
    store = Store(memory=100_000, watch=lambda event, key, item: events.append((event, key)))
    value = b"v" * 1000
    for i in range(50):
        store.store("set", b"key%d" % i, value)
    store.get(b"key0")  # now the most recently used
    for i in range(50, 500):
        store.store("set", b"key%d" % i, value)
        assert store.bytes <= store.memory
    assert store.stats["evictions"] > 300 and ("evict", b"key1") in events
    assert store.get(b"key1") is None and store.get(b"key499") is not None
    assert store.bytes == sum(len(k) + len(i.value) + ITEM_OVERHEAD for k, i in store.items.items())


def test_expiry_relative_absolute_negative():
    """Relative seconds, absolute UNIX times past 30 days, negative = expired at once, 0 = never."""
    clock = Clock()
    store = Store(clock=clock)
    store.started = clock.now - 10
    store.store("set", b"rel", b"1", exptime=10)
    store.store("set", b"abs", b"1", exptime=int(clock.now) + 20)
    store.store("set", b"past", b"1", exptime=60 * 60 * 24 * 31)  # absolute, long gone
    store.store("set", b"neg", b"1", exptime=-1)
    store.store("set", b"never", b"1", exptime=0)
    assert store.get(b"past") is None and store.get(b"neg") is None
    clock.now += 10
    assert store.get(b"rel") is None and store.get(b"abs") is not None
    clock.now += 10
    assert store.get(b"abs") is None and store.get(b"never") is not None


def test_sweep_reports_expiry_to_the_watch():
    """Expired items are dropped by the sweep (not only when read), and the watch hears 'expire'."""
    clock, events = Clock(), []
    store = Store(clock=clock, watch=lambda event, key, item: events.append((event, key, item)))
    store.store("set", b"a", b"1", exptime=5)
    store.touch(b"a", 50)  # the old expiry in the heap no longer applies
    clock.now += 6
    assert store.sweep() == 0
    clock.now += 50
    assert store.sweep() == 1 and events[-1] == ("expire", b"a", None) and not store.items


def test_delayed_flush():
    """flush_all N: items stored until then vanish at that time; later ones stay."""
    clock = Clock()
    store = Store(clock=clock)
    store.store("set", b"old", b"1")
    store.flush(10)
    assert store.get(b"old") is not None
    clock.now += 11
    store.store("set", b"new", b"1")
    assert store.get(b"old") is None and store.get(b"new") is not None


def test_cas_and_modes():
    """add/replace/append/prepend/cas follow memcached; every change takes a new CAS id."""
    store = Store()
    assert store.store("add", b"k", b"a") == STORED and store.store("add", b"k", b"b") == NOT_STORED
    first = store.items[b"k"].cas
    assert store.store("append", b"k", b"z") == STORED and store.items[b"k"].cas == first + 1
    assert store.store("cas", b"k", b"c", cas=first) == "EXISTS"
    assert store.store("cas", b"k", b"c", cas=first + 1) == STORED
    assert store.store("replace", b"nope", b"x") == NOT_STORED
    assert store.delta(b"k", 1) == "NON_NUMERIC"


def test_watch_sees_every_kind_of_change():
    """set, incr, decr, touch, delete and flush each reach the watch with the new item or None."""
    events = []
    store = Store(watch=lambda event, key, item: events.append((event, key, item and item.value)))
    store.store("set", b"n", b"10")
    store.delta(b"n", 5)
    store.delta(b"n", 20, incr=False)
    store.touch(b"n", 100)
    store.delete(b"n")
    store.store("set", b"m", b"x")
    store.flush()
    assert events == [("set", b"n", b"10"), ("incr", b"n", b"15"), ("decr", b"n", b"0 "), ("touch", b"n", b"0 "),
                      ("delete", b"n", None), ("set", b"m", b"x"), ("flush", b"m", None)]



class RaisingBroker:
    """What the watch sees of a broker whose ``deliver`` raises (as one that is closing might)."""

    class registry:  # noqa: N801 - the broker's attribute
        queues = {"coremq.store.k": object()}

    def deliver(self, queue, message):
        raise RuntimeError("closing")


def test_watch_failure_does_not_undo_or_fail_the_change():
    """A broker that raises while publishing a change costs that message only: the set is made and answered."""
    from coremq_broker.store.watch import broker_watch

    broker = RaisingBroker()
    store = Store(watch=broker_watch(lambda: broker))
    assert store.store("set", b"k", b"v") == STORED and store.get(b"k").value == b"v"
