"""coremq.js in Chromium against a scripted server (a fake WebSocket): resume, gaps, epochs, requests, backoff."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

pytestmark = pytest.mark.timeout(60)

CLIENT = Path(__file__).resolve().parents[2] / "coremq_broker" / "static" / "coremq" / "coremq.js"

# A WebSocket whose server side the test plays: it records what the client sends.
FAKE_SOCKET = """
class FakeSocket {
  constructor(url) { this.url = url; this.sent = []; FakeSocket.all.push(this); }
  send(data) { this.sent.push(JSON.parse(data)); }
  close(code, reason) { setTimeout(() => this.onclose && this.onclose({ code: code || 1000, reason: reason || "" })); }
  deliver(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
  drop(code = 1006) { this.onclose({ code, reason: "" }); }
  request(action) { return [...this.sent].reverse().find((frame) => frame.action === action); }
  answer(action, frame) { const request = this.request(action); this.deliver({ ...frame, ref: request.ref }); return request; }
}
FakeSocket.all = [];
window.WebSocket = FakeSocket;
window.socket = (n) => FakeSocket.all[n];
window.nextSocket = async (n) => { while (FakeSocket.all.length <= n) await new Promise((r) => setTimeout(r, 5)); return FakeSocket.all[n]; };
window.got = [];
window.events = [];
window.message = (queue, id, sent = id) => ({ type: "message", queue, id, message: { n: id }, sender: "s", sent });
"""


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A blank Chromium page with coremq.js loaded over a fake WebSocket."""
    context = chromium.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_content("<!doctype html><title>coremq.js</title>")
    page.evaluate(FAKE_SOCKET)
    page.add_script_tag(path=str(CLIENT))
    yield page
    assert errors == []
    context.close()


def start(page: Any, epoch: str = "e1") -> None:
    """A client subscribed to q, welcomed and answered with q's sequence (nothing published yet)."""
    page.evaluate("""(epoch) => {
        window.mq = new CoreMQ("ws://example.test/ws/coremq/", { minDelay: 1, maxDelay: 4 });
        for (const name of ["gap", "reset", "state", "direct"]) mq.on(name, (value) => events.push([name, value]));
        mq.subscribe("q", (message, meta) => got.push([meta.id, meta.replayed]));
        socket(0).deliver({ type: "welcome", connection_id: "b/1", epoch });
        socket(0).answer("subscribe", { type: "subscribed", queues: ["q"], sequence: { q: { first: null, last: 0 } } });
    }""", epoch)


def reconnect(page: Any, n: int, epoch: str = "e1") -> None:
    """Drop socket n-1; once the client opened socket n, welcome it."""
    page.evaluate("""async ([n, epoch]) => {
        socket(n - 1).drop();
        const next = await nextSocket(n);
        next.deliver({ type: "welcome", connection_id: "b/" + (n + 1), epoch });
    }""", [n, epoch])


def test_resumes_from_the_last_id_and_holds_live_messages(page: Any) -> None:
    """After a reconnect the client asks for history since its last id; live messages wait; none twice."""
    start(page)
    page.evaluate("socket(0).deliver(message('q', 1)); socket(0).deliver(message('q', 2))")
    reconnect(page, 1)
    assert page.evaluate("socket(1).request('subscribe').queues") == ["q"]
    assert page.evaluate("socket(1).request('history').since") == {"q": 2}
    page.evaluate("""
        socket(1).deliver(message('q', 5));
        socket(1).answer('history', { type: 'history', history: { q: [3, 4, 5].map((id) => message('q', id)) },
                                      sequence: { q: { first: 1, last: 5 } } });
        socket(1).deliver(message('q', 6));
    """)
    assert page.evaluate("got") == [[1, False], [2, False], [3, True], [4, True], [5, True], [6, False]]
    assert page.evaluate("events.filter(([name]) => name === 'gap')") == []


def test_reports_a_gap_when_history_moved_on(page: Any) -> None:
    """If history no longer holds the missed ids, a gap event names them and the rest is delivered."""
    start(page)
    page.evaluate("socket(0).deliver(message('q', 1))")
    reconnect(page, 1)
    page.evaluate("""socket(1).answer('history', { type: 'history', history: { q: [message('q', 7)] },
                                                     sequence: { q: { first: 7, last: 7 } } })""")
    assert page.evaluate("got") == [[1, False], [7, True]]
    assert page.evaluate("events.filter(([name]) => name === 'gap')") == [["gap", {"queue": "q", "from": 2, "to": 6}]]


def test_new_epoch_rereads_history_and_skips_what_it_saw(page: Any) -> None:
    """After a broker restart (new epoch) a queue not `continued` starts again at 1: its whole new history is read."""
    start(page)
    page.evaluate("socket(0).deliver(message('q', 1, 100)); socket(0).deliver(message('q', 2, 101))")
    reconnect(page, 1, epoch="e2")
    assert page.evaluate("socket(1).request('history').since") == {"q": 2}
    page.evaluate("""socket(1).answer('history', { type: 'history', history: { q: [] },
                                                     sequence: { q: { first: 1, last: 2 } } })""")
    assert page.evaluate("socket(1).request('history').since") == {"q": None}
    page.evaluate("""socket(1).answer('history', { type: 'history',
                        history: { q: [message('q', 1, 200), message('q', 2, 201)] }, sequence: { q: { first: 1, last: 2 } } })""")
    assert page.evaluate("got") == [[1, False], [2, False], [1, True], [2, True]]
    assert page.evaluate("events.filter(([name]) => name === 'reset').length") == 1


def test_new_epoch_continued_queue_resumes_without_duplicates(page: Any) -> None:
    """After a restart a queue whose answer says `continued` (durable) resumes from its last id: nothing twice."""
    start(page)
    page.evaluate("for (const id of [1, 2, 3, 4, 5]) socket(0).deliver(message('q', id))")
    reconnect(page, 1, epoch="e2")
    assert page.evaluate("socket(1).request('history').since") == {"q": 5}
    page.evaluate("""
        socket(1).deliver(message('q', 7, 300));
        socket(1).answer('history', { type: 'history', history: { q: [message('q', 6, 200)] },
                                      sequence: { q: { first: 1, last: 6, continued: true } } });
        socket(1).deliver(message('q', 8, 301));
    """)
    assert page.evaluate("got") == [[1, False], [2, False], [3, False], [4, False], [5, False],
                                    [6, True], [7, False], [8, False]]
    assert page.evaluate("socket(1).sent.filter((frame) => frame.action === 'history').length") == 1
    assert page.evaluate("events.filter(([name]) => name === 'gap')") == []


def test_a_hole_in_live_messages_is_filled_from_history(page: Any) -> None:
    """A live message that skips ids makes the client fetch the missing ones first."""
    start(page)
    page.evaluate("socket(0).deliver(message('q', 1)); socket(0).deliver(message('q', 4))")
    assert page.evaluate("socket(0).request('history').since") == {"q": 1}
    page.evaluate("""socket(0).answer('history', { type: 'history', history: { q: [2, 3, 4].map((id) => message('q', id)) },
                                                     sequence: { q: { first: 1, last: 4 } } })""")
    assert [item[0] for item in page.evaluate("got")] == [1, 2, 3, 4]


def test_publish_resolves_or_rejects_by_ref(page: Any) -> None:
    """publish() resolves with the id of the published answer and rejects with the error of its ref."""
    start(page)
    result = page.evaluate("""async () => {
        const ok = mq.publish("q", { a: 1 });
        socket(0).answer("publish", { type: "published", queue: "q", id: 9 });
        const refused = mq.publish("q", "x");
        socket(0).answer("publish", { type: "error", error: "permission denied: publish on queue 'q'" });
        let error = null;
        try { await refused; } catch (caught) { error = caught.message; }
        return [(await ok).id, error, socket(0).request("publish").message];
    }""")
    assert result == [9, "permission denied: publish on queue 'q'", "x"]


def test_requests_made_offline_are_sent_once_welcomed(page: Any) -> None:
    """A publish made before the welcome is sent after it; one in flight when the socket drops is rejected."""
    outcome = page.evaluate("""async () => {
        window.mq = new CoreMQ("ws://example.test/ws/coremq/", { minDelay: 1, maxDelay: 4 });
        const early = mq.publish("q", "early");
        early.catch(() => {});  // never answered: rejected when the socket drops
        const before = socket(0).sent.length;
        socket(0).deliver({ type: "welcome", connection_id: "b/1", epoch: "e1" });
        const sent = socket(0).request("publish").message;
        const lost = mq.publish("q", "lost");
        socket(0).drop();
        let error = null;
        try { await lost; } catch (caught) { error = caught.message; }
        await nextSocket(1);
        socket(1).deliver({ type: "welcome", connection_id: "b/2", epoch: "e1" });
        return [before, sent, error, socket(1).sent.length];
    }""")
    assert outcome == [0, "early", "connection lost", 0]  # the lost publish is not sent again


def test_point_to_point_messages_are_direct_events(page: Any) -> None:
    """A message on the page's own connection id is a direct event, not a queue message."""
    start(page)
    page.evaluate("socket(0).deliver({ type: 'message', queue: 'b/1', id: 1, message: 'psst', sender: 'x', sent: 1 })")
    assert page.evaluate("events.filter(([name]) => name === 'direct').map(([, message]) => message)") == ["psst"]
    assert page.evaluate("got") == []


def test_reconnect_delays_double_with_jitter_up_to_the_maximum(page: Any) -> None:
    """Each delay lies in [step/2, step], the step doubling from minDelay up to maxDelay."""
    delays = page.evaluate("""async () => {
        const delays = [];
        window.mq = new CoreMQ("ws://example.test/ws/coremq/", { minDelay: 2, maxDelay: 16 });
        mq.on("reconnecting", ({ delay }) => delays.push(delay));
        for (let n = 0; n < 7; n++) (await nextSocket(n)).drop();
        mq.close();
        return delays;
    }""")
    steps = [2, 4, 8, 16, 16, 16, 16]
    assert len(delays) == len(steps)
    for delay, step in zip(delays, steps):
        assert round(step / 2) <= delay <= step


def test_close_codes_decide_whether_to_reconnect(page: Any) -> None:
    """4012 and 4013 are reconnected after; 4008 (after its error frame) emits "revoked" and stays closed."""
    outcome = page.evaluate("""async () => {
        window.mq = new CoreMQ("ws://example.test/ws/coremq/", { minDelay: 1, maxDelay: 4 });
        mq.on("revoked", (value) => events.push(["revoked", value]));
        const subscribed = mq.subscribe("q");
        for (const [n, code] of [[0, 4012], [1, 4013]]) {
            const socket = await nextSocket(n);
            socket.deliver({ type: "welcome", connection_id: "b/" + n, epoch: "e1" });
            socket.drop(code);
        }
        const last = await nextSocket(2);
        last.deliver({ type: "welcome", connection_id: "b/2", epoch: "e1" });
        last.deliver({ type: "error", error: "credentials revoked", ref: null });
        last.drop(4008);
        let rejected = null;
        try { await subscribed; } catch (error) { rejected = error.message; }
        await new Promise((resolve) => setTimeout(resolve, 50));
        return [socket(3) === undefined, mq.state, events, rejected];
    }""")
    assert outcome == [True, "closed", [["revoked", {"code": 4008, "reason": "", "error": "credentials revoked"}]],
                       "credentials revoked"]


def test_dropped_ids_are_fetched_from_history_and_only_the_lost_ones_are_a_gap(page: Any) -> None:
    """A dropped frame makes the client fetch those ids (live ones wait); a gap names only what history lost."""
    start(page)
    page.evaluate("""
        socket(0).deliver(message('q', 1)); socket(0).deliver(message('q', 2));
        socket(0).deliver({ type: 'dropped', queue: 'q', first: 3, last: 6 });
        socket(0).deliver(message('q', 7));
    """)
    assert page.evaluate("socket(0).request('history').since") == {"q": 2}
    page.evaluate("""socket(0).answer('history', { type: 'history', history: { q: [5, 6, 7].map((id) => message('q', id)) },
                                                     sequence: { q: { first: 5, last: 7 } } });
                     socket(0).deliver(message('q', 8));""")
    assert page.evaluate("got") == [[1, False], [2, False], [5, True], [6, True], [7, True], [8, False]]
    assert page.evaluate("events.filter(([name]) => name === 'gap')") == [["gap", {"queue": "q", "from": 3, "to": 4}]]


def test_a_drop_of_ids_already_delivered_asks_nothing(page: Any) -> None:
    """A dropped frame for ids the page already has (or a queue it dropped) fetches nothing."""
    start(page)
    page.evaluate("socket(0).deliver(message('q', 1)); socket(0).deliver(message('q', 2))")
    page.evaluate("socket(0).deliver({ type: 'dropped', queue: 'q', first: 1, last: 2 })")
    page.evaluate("socket(0).deliver({ type: 'dropped', queue: 'other', first: 1, last: 9 })")
    assert page.evaluate("socket(0).request('history')") is None


def test_history_is_fetched_in_pages_and_live_messages_wait_for_the_last(page: Any) -> None:
    """A refill asks for historyPage messages at a time, from the last id got, while `more` says so; then live ones."""
    requests = page.evaluate("""async () => {
        window.mq = new CoreMQ("ws://example.test/ws/coremq/", { minDelay: 1, maxDelay: 4, historyPage: 2 });
        mq.subscribe("q", (message, meta) => got.push([meta.id, meta.replayed]));
        socket(0).deliver({ type: "welcome", connection_id: "b/1", epoch: "e1" });
        socket(0).answer("subscribe", { type: "subscribed", queues: ["q"], sequence: { q: { first: null, last: 0 } } });
        socket(0).deliver(message("q", 1));
        socket(0).deliver({ type: "dropped", queue: "q", first: 2, last: 5 });
        socket(0).deliver(message("q", 6));
        const asked = [];
        for (const [ids, more] of [[[2, 3], true], [[4, 5], true], [[6], false]]) {
            const request = socket(0).request("history");
            asked.push([request.since, request.limit]);
            socket(0).answer("history", { type: "history", history: { q: ids.map((id) => message("q", id)) },
                                          sequence: { q: { first: 1, last: 6 } }, ...(more ? { more: { q: true } } : {}) });
            await new Promise((resolve) => setTimeout(resolve));  // the answer is handled, the next page asked
        }
        socket(0).deliver(message("q", 7));
        return asked;
    }""")
    assert requests == [[{"q": 1}, 2], [{"q": 3}, 2], [{"q": 5}, 2]]
    assert page.evaluate("got") == [[1, False], [2, True], [3, True], [4, True], [5, True], [6, True], [7, False]]


def test_a_size_cut_page_without_the_queue_asks_again_and_reports_no_gap(page: Any) -> None:
    """An answer naming a queue in `more` but holding none of it (cut at the frame size) asks again from the same id; nothing is lost."""
    requests = page.evaluate("""async () => {
        window.mq = new CoreMQ("ws://example.test/ws/coremq/", { minDelay: 1, maxDelay: 4, historyPage: 2 });
        for (const name of ["gap", "reset"]) mq.on(name, (value) => events.push([name, value]));
        mq.subscribe("q", (message, meta) => got.push([meta.id, meta.replayed]));
        socket(0).deliver({ type: "welcome", connection_id: "b/1", epoch: "e1" });
        socket(0).answer("subscribe", { type: "subscribed", queues: ["q"], sequence: { q: { first: null, last: 0 } } });
        socket(0).deliver(message("q", 1));
        socket(0).deliver({ type: "dropped", queue: "q", first: 2, last: 3 });
        socket(0).deliver(message("q", 4));
        const asked = [];
        for (const [ids, more] of [[[], true], [[2, 3], false]]) {
            const request = socket(0).request("history");
            asked.push(request.since);
            socket(0).answer("history", { type: "history", history: { q: ids.map((id) => message("q", id)) },
                                          sequence: { q: { first: 1, last: 4 } }, ...(more ? { more: { q: true } } : {}) });
            await new Promise((resolve) => setTimeout(resolve));
        }
        return asked;
    }""")
    assert requests == [{"q": 1}, {"q": 1}]
    assert page.evaluate("got") == [[1, False], [2, True], [3, True], [4, False]]
    assert page.evaluate("events") == []
