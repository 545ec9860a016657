"""The broker's drop notices in the resumer and the clients' routing alone: no sockets, no event loop."""

from __future__ import annotations

from coremq_client._common import Routed, SessionState, resume_batch, route
from coremq_client.errors import SlowConsumer
from coremq_client.protocol import Delivery, Gap, Reply
from coremq_client.resume import Resumer

from test_resume import delivered, ids, live, reply


def notice(queue: str, first: int | None, last: int | None) -> dict:
    """The ``dropped`` object of a drop notice."""
    return {queue: {"first": first, "last": last}}


def test_a_drop_notice_starts_a_resync_from_the_last_id_delivered():
    """Dropped ids are fetched from history; live messages meanwhile are held and merged, duplicates dropped."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2, 3)
    gaps, since = resumer.dropped(notice("q", 4, 6), ["q"])
    assert gaps == [] and since == {"q": 2}  # one early, as after a reconnect
    assert resumer.accept(live("q", 7)) == [] and resumer.accept(live("q", 8)) == []  # held
    items, again = resumer.history(since, reply("q", [3, 4, 5, 6, 7], 1, 7))
    assert ids(items) == [4, 5, 6, 7, 8] and again == {}
    assert resumer.accept(live("q", 8)) == []  # a duplicate
    assert ids(resumer.accept(live("q", 9))) == [9]


def test_what_history_no_longer_holds_is_the_gap():
    """Of the dropped ids, only those that left the history are reported, and they mark the next delivery."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2, 3)
    _, since = resumer.dropped(notice("q", 4, 9), ["q"])
    resumer.accept(live("q", 10))
    items, _ = resumer.history(since, reply("q", [7, 8, 9], 7, 9))
    assert ids(items) == [(4, 6, False), 7, 8, 9, 10]
    assert items[1].gap == Gap("q", 4, 6) and all(d.gap is None for d in items[2:])


def test_a_drop_during_a_resync_asks_again_once_the_reply_is_complete():
    """A reply that may predate a drop noticed meanwhile does not end the resync: the next one covers the drop."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])  # a reconnect's resync is under way
    assert resumer.dropped(notice("q", 10, 12), ["q"]) == ([], {})  # no second request at once
    resumer.accept(live("q", 13))
    items, again = resumer.history(since, reply("q", [2, 3, 4, 5, 6, 7, 8, 9], 1, 9))  # taken before the drop
    assert ids(items) == [3, 4, 5, 6, 7, 8, 9] and again == {"q": 9}
    items, again = resumer.history(again, reply("q", [10, 11, 12, 13], 1, 13))
    assert ids(items) == [10, 11, 12, 13] and again == {}


def test_a_reply_that_covers_the_drop_ends_the_resync():
    """If the reply's sequence already reaches the last id dropped, no further request is made."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2)
    since = resumer.plan(["q"])
    resumer.dropped(notice("q", 4, 5), ["q"])
    items, again = resumer.history(since, reply("q", [2, 3, 4, 5, 6], 1, 6))
    assert ids(items) == [3, 4, 5, 6] and again == {}


def test_a_notice_of_ids_already_delivered_changes_nothing():
    """Ids at or below the last one delivered need no resync."""
    resumer = Resumer()
    delivered(resumer, "q", 1, 2, 3, 4, 5)
    assert resumer.dropped(notice("q", 2, 4), ["q"]) == ([], {})
    assert ids(resumer.accept(live("q", 6))) == [6]


def test_a_queue_with_nothing_delivered_resumes_from_the_first_id_dropped():
    """Without a mark, the notice's first id tells where the stream starts."""
    resumer = Resumer()
    _, since = resumer.dropped(notice("q", 5, 7), ["q"])
    assert since == {"q": 4}
    items, _ = resumer.history(since, reply("q", [5, 6, 7], 1, 7))
    assert ids(items) == [5, 6, 7]


def test_ids_dropped_below_a_probes_point_are_fetched_too():
    """Live messages racing a probe may have ids below its point: if those are dropped, they are fetched too."""
    resumer = Resumer()
    resumer.history(resumer.plan(["q"]), reply("q", [], 1, 10))  # the probe: resume from 10
    _, since = resumer.dropped(notice("q", 9, 11), ["q"])
    assert since == {"q": 8}
    items, _ = resumer.history(since, reply("q", [9, 10, 11], 1, 11))
    assert ids(items) == [9, 10, 11]


def test_without_resume_or_subscription_the_dropped_ids_are_the_gap():
    """With resume off, and for a queue not subscribed (a private one), the dropped ids are reported as lost."""
    resumer = Resumer(enabled=False)
    delivered(resumer, "q", 1, 2)
    gaps, since = resumer.dropped(notice("q", 3, 5), ["q"])
    assert gaps == [Gap("q", 3, 5)] and since == {}
    assert resumer.accept(live("q", 6))[0].gap == Gap("q", 3, 5)
    resumer = Resumer()
    gaps, since = resumer.dropped(notice("me/inbox", 1, 4), ["q"])
    assert gaps == [Gap("me/inbox", 1, 4)] and since == {}


def test_held_deliveries_are_bounded_and_the_reply_brings_the_rest():
    """At most max_held live deliveries are held per queue; those let go come with the history reply."""
    resumer = Resumer(max_held=2)
    delivered(resumer, "q", 1)
    _, since = resumer.dropped(notice("q", 2, 3), ["q"])
    for number in (4, 5, 6, 7):
        assert resumer.accept(live("q", number)) == []
    assert len(resumer._held["q"]) == 2
    items, _ = resumer.history(since, reply("q", [1, 2, 3, 4, 5, 6, 7], 1, 7))
    assert ids(items) == [2, 3, 4, 5, 6, 7]


def test_route_keeps_drop_notices_in_the_stream_of_deliveries():
    """A drop notice stays in order between deliveries (it tells where the lost ones belonged); replies do not."""
    drop = Reply(None, {"response": "ERROR: slow consumer: messages dropped", "dropped": notice("q", 2, 3)})
    routed = route([Delivery("q", "a", 1), drop, Reply(1, {}), Delivery("q", "b", 4)])
    assert routed.stream == [Delivery("q", "a", 1), drop, Delivery("q", "b", 4)]
    assert [r.request for r in routed.replies] == [1]


def test_resume_batch_resyncs_and_reports_a_slow_consumer_with_the_ids():
    """One batch: the delivery before the notice is delivered, the one after is held, a resync is asked for,
    and a SlowConsumer error names the dropped ids."""
    resumer = Resumer()
    drop = Reply(None, {"response": "ERROR: slow consumer: messages dropped", "dropped": notice("q", 2, 3)})
    routed = route([live("q", 1), drop, live("q", 4)])
    resyncs: dict[int, dict[str, int]] = {}
    items, requests, replies = resume_batch(resumer, resyncs, routed, SessionState(["q"]))
    assert ids(items) == [1] and requests == [{"q": 0}] and replies == []
    [error] = routed.errors
    assert isinstance(error, SlowConsumer) and error.dropped == {"q": (2, 3)}
    assert error.reason == "slow consumer: messages dropped" and error.request is None
    resyncs[7] = requests[0]
    answer = Routed(replies=[Reply(7, reply("q", [1, 2, 3, 4], 1, 4))])
    items, requests, replies = resume_batch(resumer, resyncs, answer, SessionState(["q"]))
    assert ids(items) == [2, 3, 4] and requests == [] and replies == [] and resyncs == {}
