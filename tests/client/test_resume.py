"""The resumer alone: deliveries and history replies in, deliveries and gaps out. No sockets, no event loop."""

from __future__ import annotations

from coremq_client.protocol import Delivery, Gap
from coremq_client.resume import PROBE, Resumer

SENT = 1_700_000_000.0


def stored(queue: str, number: int, *, sent: float | None = None, sender: str = "pub") -> dict:
    """A message as the broker stores and delivers it."""
    return {"n": number, "coremq_id": number, "coremq_sent": SENT + number if sent is None else sent,
            "coremq_sender": sender, "coremq_server": "127.0.0.1:6747"}


def live(queue: str, number: int, **kwargs) -> Delivery:
    return Delivery.from_stored(queue, stored(queue, number, **kwargs))


def reply(queue: str, numbers, first: int | None, last: int, **kwargs) -> dict:
    return {"history": {queue: [stored(queue, n, **kwargs) for n in numbers]},
            "sequence": {queue: {"first": first, "last": last}}}


def ids(items) -> list:
    """Delivered ids, and gaps as tuples, in order."""
    return [(i.first_missing, i.last_missing, i.reset) if isinstance(i, Gap) else i.id for i in items]


def delivered(resumer: Resumer, queue: str, *numbers: int) -> None:
    for number in numbers:
        assert resumer.accept(live(queue, number)) != []


def test_unseen_queue_is_probed_and_resumes_from_its_last_id():
    """A queue with nothing delivered is probed; the sequence's last id is where it resumes from."""
    resumer = Resumer()
    since = resumer.plan(["q"])
    assert since == {"q": PROBE}
    assert resumer.history(since, reply("q", [], 1, 7)) == ([], {})
    assert resumer.last_ids == {}  # nothing delivered yet
    since = resumer.plan(["q"])
    assert since == {"q": 7}
    items, again = resumer.history(since, reply("q", [8, 9], 1, 9))
    assert ids(items) == [8, 9] and again == {} and resumer.last_ids == {"q": 9}


def test_probe_does_not_hold_or_drop_live_messages():
    """Live deliveries racing a probe are delivered, even with ids below the probe's last (broker batches)."""
    resumer = Resumer()
    since = resumer.plan(["q"])
    resumer.history(since, reply("q", [], 1, 5))
    assert ids(resumer.accept(live("q", 5))) == [5]
    assert ids(resumer.accept(live("q", 6))) == [6]


def test_missed_messages_come_first_in_order_and_once():
    """After a reconnect, held live messages and history merge in id order, duplicates dropped."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2, 3)
    since = resumer.plan(["q"])
    assert since == {"q": 2}  # one early, to recognise message 3
    assert resumer.accept(live("q", 6)) == [] and resumer.accept(live("q", 7)) == []  # held
    items, _ = resumer.history(since, reply("q", [3, 4, 5, 6], 1, 7))
    assert ids(items) == [4, 5, 6, 7]
    assert resumer.accept(live("q", 7)) == []  # sent live after the history that held it
    assert ids(resumer.accept(live("q", 8))) == [8]


def test_gap_larger_than_history_is_reported_and_marks_the_next_delivery():
    """When history starts after the next id expected, a Gap names the lost ids and tags the next message."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    items, _ = resumer.history(since, reply("q", [8, 9], 8, 9))
    assert ids(items) == [(3, 7, False), 8, 9]
    assert items[1].gap == Gap("q", 3, 7) and items[2].gap is None
    assert items[0].count == 5


def test_sequence_going_backwards_is_a_reset_and_the_new_numbering_is_fetched():
    """last below the id delivered means a restarted numbering: ask from 0, deliver it all, report a reset."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2, 3, 4, 5)
    since = resumer.plan(["q"])
    assert resumer.accept(live("q", 3, sent=5.0)) == []  # new numbering, held meanwhile
    items, again = resumer.history(since, reply("q", [], 1, 3))
    assert items == [] and again == {"q": 0}
    items, again = resumer.history(again, reply("q", [1, 2, 3], 1, 3, sent=5.0))
    assert again == {} and ids(items) == [(None, None, True), 1, 2, 3]
    assert items[1].gap == Gap("q", None, None, reset=True) and items[2].gap is None
    assert ids(resumer.accept(live("q", 4))) == [4]


def test_reset_is_recognised_by_the_delivered_message_changing():
    """A restarted numbering that already passed the id delivered is told by the stored message's stamp."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    items, again = resumer.history(since, reply("q", [2, 3, 4], 1, 4, sent=9.0))
    assert items == [] and again == {"q": 0}
    items, _ = resumer.history(again, reply("q", [3, 4], 3, 4, sent=9.0))
    assert ids(items) == [(1, 2, True), 3, 4]


def test_reset_without_new_messages_is_still_reported():
    """A restarted queue with nothing new yet reports the reset; later messages are delivered from id 1."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    items, again = resumer.history(resumer.plan(["q"]), reply("q", [], None, 0))
    items, _ = resumer.history(again, reply("q", [], None, 0))
    assert ids(items) == [(None, None, True)]
    delivery = resumer.accept(live("q", 1))
    assert ids(delivery) == [1] and delivery[0].gap == Gap("q", None, None, reset=True)


def test_own_messages_are_skipped_without_echo():
    """History holds this client's own publishes; without echo they are not delivered, with echo they are."""
    for echo, expected in ((False, [2, 4]), (True, [2, 3, 4])):
        resumer = Resumer()
        resumer.connected("me-1")
        delivered(resumer, "q", 1)
        resumer.connected("me-2")
        history = {"history": {"q": [stored("q", 2), stored("q", 3, sender="me-1"), stored("q", 4)]},
                   "sequence": {"q": {"first": 1, "last": 4}}}
        items, _ = resumer.history(resumer.plan(["q"]), history, echo=echo)
        assert ids(items) == expected and items[-1].gap is None


def test_empty_history_lets_the_next_live_message_tell_the_gap():
    """With nothing stored (purged, or no history kept), the first live message after shows what was lost."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    items, _ = resumer.history(resumer.plan(["q"]), reply("q", [], None, 6))
    assert items == []
    assert ids(resumer.accept(live("q", 5))) == [(3, 4, False), 5]


def test_refused_history_releases_what_was_held():
    """If the history request is refused, held deliveries are released in order, duplicates dropped."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    resumer.accept(live("q", 4))
    resumer.accept(live("q", 3))
    resumer.accept(live("q", 2))
    assert ids(resumer.failed(since)) == [3, 4]
    assert ids(resumer.accept(live("q", 5))) == [5]


def test_forget_drops_marks_and_held_messages():
    """An unsubscribed queue loses its mark and what was held; a late reply for it changes nothing."""
    resumer = Resumer()
    delivered(resumer, "q", 1)
    since = resumer.plan(["q"])
    resumer.accept(live("q", 2))
    resumer.forget(["q"])
    assert resumer.history(since, reply("q", [2], 1, 2)) == ([], {})
    assert resumer.last_ids == {} and resumer.plan(["q"]) == {"q": PROBE}


def test_held_messages_survive_a_second_reconnect():
    """Messages held when the connection dropped again before the reply are merged on the next one."""
    resumer = Resumer()
    delivered(resumer, "q", 1)
    resumer.plan(["q"])
    resumer.accept(live("q", 5))  # held; the reply never comes
    since = resumer.plan(["q"])  # next connection
    items, _ = resumer.history(since, reply("q", [3, 4], 3, 5))
    assert ids(items) == [(2, 2, False), 3, 4, 5]


def test_disabled_passes_everything_and_keeps_last_ids():
    """With resume off nothing is planned or dropped, and last_ids still follows deliveries."""
    resumer = Resumer(enabled=False)
    assert resumer.plan(["q"]) == {}
    delivered(resumer, "q", 3, 1)
    assert resumer.last_ids == {"q": 1}


def test_refused_history_still_reports_what_the_held_messages_show():
    """When history cannot be had, held messages after a hole release with a gap; none held: the next live one tells."""
    resumer = Resumer()
    delivered(resumer, "q", 1)
    since = resumer.plan(["q"])
    resumer.accept(live("q", 4))
    assert ids(resumer.failed(since)) == [(2, 3, False), 4]
    since = resumer.plan(["q"])
    assert resumer.failed(since) == []
    assert ids(resumer.accept(live("q", 7))) == [(5, 6, False), 7]


def test_private_queues_of_earlier_connections_are_forgotten():
    """Marks of a previous connection's id queue and sub-addresses go when the next connection starts."""
    resumer = Resumer()
    resumer.connected("c1")
    delivered(resumer, "c1", 1)
    delivered(resumer, "c1/browser", 1)
    delivered(resumer, "q", 4)
    resumer.connected("c2")
    assert resumer.last_ids == {"q": 4}


def test_a_long_history_comes_in_pages_with_live_messages_held_to_the_end():
    """A reply marked ``more`` is one page: it is delivered, live messages stay held, the next page is asked for."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    assert since == {"q": 1}  # one early: message 2 comes back as the fingerprint
    assert resumer.accept(live("q", 9)) == []  # live, while the resume runs: held
    page = reply("q", range(2, 6), 1, 8) | {"more": {"q": True}}
    items, again = resumer.history(since, page)
    assert ids(items) == [3, 4, 5] and again == {"q": 5}
    assert resumer.accept(live("q", 10)) == []  # still held until the last page
    items, again = resumer.history(again, reply("q", range(6, 9), 1, 9))
    assert ids(items) == [6, 7, 8, 9, 10] and again == {}
    assert ids(resumer.accept(live("q", 11))) == [11]


def test_a_page_that_brings_nothing_new_asks_on_from_where_it_ended():
    """``more`` after a page of only what was delivered asks again from the page's end, so paging ends."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    assert resumer.accept(live("q", 3)) == []
    items, again = resumer.history(since, reply("q", [2], 1, 3) | {"more": {"q": True}})
    assert ids(items) == [] and again == {"q": 2}
    items, again = resumer.history(again, reply("q", [3], 1, 3))
    assert ids(items) == [3] and again == {}


def test_a_page_without_the_queue_asks_again_from_the_same_id():
    """A size-paged reply that names a queue in ``more`` but holds none of it asks again; nothing is released early."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    assert resumer.accept(live("q", 4)) == []
    items, again = resumer.history(since, reply("q", [], 1, 4) | {"more": {"q": True}})
    assert items == [] and again == since
    items, again = resumer.history(again, reply("q", [2, 3, 4], 1, 4))
    assert ids(items) == [3, 4] and again == {}
