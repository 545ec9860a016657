"""The clients' sans-I/O session: bytes in, bytes and decisions out, with no socket and no event loop."""

from __future__ import annotations

import itertools
import json
from concurrent.futures import Future
from typing import Any

import pytest

from coremq_client.codec import JSONCodec, encode_frame
from coremq_client.errors import AuthenticationFailed, ConnectionClosed, ServerError, Timeout
from coremq_client.protocol import Delivery, Gap
from coremq_client.resume import PROBE
from coremq_client.session import Done, Link, Probe, Request, Session, advance

ID = "c0ffee00-0000-4000-8000-000000000001"
WELCOME = encode_frame(ID, json.dumps({"response": "OK: Welcome from CoreMQ!", "max_frame_size": 1 << 20}).encode())


def frame(queue: str, message: dict) -> bytes:
    return encode_frame(queue, json.dumps(message).encode())


def reply(number: int, **fields: Any) -> bytes:
    return frame(ID, {"response": "OK", "request": number, **fields})


def make_session(**overrides: Any) -> Session:
    options: dict[str, Any] = dict(
        queues=["news"], options=None, reconnect=True, backoff=0.1, max_backoff=1.0, codec=JSONCodec(),
        max_frame_size=1 << 20, credentials=None, resume=True, on_error=None, on_connect=None, on_gap=None,
        max_pending=None,
    )
    options.update(overrides)
    return Session(**options)


def requests_in(data: bytes) -> list[dict]:
    """The JSON bodies of the frames in ``data`` (all sent to the connection's own queue)."""
    from coremq_client.codec import FrameParser

    parser = FrameParser()
    parser.receive_data(data)
    bodies = []
    for queue, body in parser.events():
        assert queue == ID
        bodies.append(json.loads(body))
    return bodies


def test_handshake_replays_subscriptions_then_probes_them():
    """After the welcome a link sends the subscribe, then a history probe of the queue; it is ready."""
    link = Link(make_session(), wait=True, future=Future)
    sent = link.handshake(WELCOME)
    assert link.ready and link.welcome.connection_id == ID
    assert requests_in(sent) == [{"coremq_subscribe": ["news"]},
                                 {"coremq_gethistory": {"news": PROBE}, "limit": 100}]
    assert len(link.replayed) == 1 and link.resyncs == {2: {"news": PROBE}}


def test_handshake_byte_by_byte_and_with_a_login():
    """Fed one byte at a time, a link logs in after the welcome and replays only once the login is confirmed."""
    link = Link(make_session(credentials={"token": "t"}), wait=False, future=Future)
    out = b"".join(link.handshake(WELCOME[i:i + 1]) for i in range(len(WELCOME)))
    assert requests_in(out) == [{"coremq_auth": {"token": "t"}}] and not link.ready
    answer = frame(ID, {"response": "OK: Authenticated", "request": 1, "user": "alice"})
    out = b"".join(link.handshake(answer[i:i + 1]) for i in range(len(answer)))
    assert link.ready and link.user == "alice" and link.replayed == []
    assert [list(r) for r in requests_in(out)] == [["coremq_subscribe"], ["coremq_gethistory", "limit"]]


def test_refused_login_and_a_missing_welcome_raise():
    """Refused credentials raise AuthenticationFailed; a stream not starting with a welcome raises ConnectionClosed."""
    link = Link(make_session(credentials={"token": "bad"}), wait=True, future=Future)
    link.handshake(WELCOME)
    with pytest.raises(AuthenticationFailed):
        link.handshake(frame(ID, {"response": "ERROR: authentication failed", "request": 1}))
    with pytest.raises(ConnectionClosed, match="did not start with a welcome"):
        Link(make_session(), wait=True, future=Future).handshake(encode_frame(ID, b"[1]"))


def test_a_batch_delivers_settles_and_asks_for_the_next_page():
    """Deliveries are queued before replies settle; a resume reply with more pages asks for the next one."""
    session = make_session()
    link = Link(session, wait=True, future=Future)
    link.handshake(WELCOME)
    stored = [{"n": n, "coremq_id": n, "coremq_sent": float(n)} for n in (6, 7)]
    data = (reply(1) + reply(2, history={"news": []}, sequence={"news": {"first": 1, "last": 5}})
            + frame("news", {"n": 6, "coremq_id": 6, "coremq_sent": 6.0}))
    order: list[str] = []
    link.replayed[0].add_done_callback(lambda _: order.append("settled"))
    batch = link.receive_data(data)
    session.act(batch, link, lambda d: order.append(f"delivered {d.id}"), lambda since: order.append("asked"))
    assert order == ["delivered 6", "settled"]
    assert session.resumer.last_ids == {"news": 6}
    # A page of a longer resume: the next one is asked for, live ones are held meanwhile.
    since = session.resumer.plan(["news"])
    data = link.resync(since)
    number = max(link.resyncs)
    asks: list[dict] = []
    delivered: list[Delivery] = []
    batch = link.receive_data(frame("news", {"n": 9, "coremq_id": 9, "coremq_sent": 9.0})
                              + reply(number, history={"news": stored}, sequence={"news": {"first": 1, "last": 9}},
                                      more={"news": True}))
    session.act(batch, link, delivered.append, asks.append)
    assert [d.id for d in delivered] == [7] and asks == [{"news": 7}]  # 9 is held until the last page


def test_retry_delay_decides_when_to_try_again():
    """Lost or timed-out attempts are retried while reconnect is on; refusals only without a waiting caller."""
    session = make_session()
    delays = itertools.repeat(0.2)
    assert session.retry_delay(ConnectionClosed("x"), delays, None, wait=True) == 0.2
    with pytest.raises(Timeout):
        session.retry_delay(Timeout("x"), delays, 0.0, wait=True)  # the deadline has passed
    with pytest.raises(ServerError):
        session.retry_delay(ServerError("too many connections"), delays, None, wait=True)
    assert session.retry_delay(ServerError("too many connections"), delays, None, wait=False) == 0.2
    assert [e.reason for e in session.reporter.recent] == ["too many connections"]  # reported, not raised
    with pytest.raises(AuthenticationFailed):
        session.retry_delay(AuthenticationFailed("authentication failed"), delays, None, wait=False)
    with pytest.raises(ConnectionClosed):
        make_session(reconnect=False).retry_delay(ConnectionClosed("x"), delays, None, wait=False)


def test_operations_keep_state_and_undo_it_when_refused():
    """subscribe records the queue, probes it once confirmed, and forgets it when the broker refuses it."""
    session = make_session(queues=[])
    operation = session.subscribe(("a",))
    step = advance(operation, None, None)
    assert isinstance(step, Request) and session.state.queues == ("a",)
    step = advance(operation, {"response": "OK: Subscribe successful"}, None)
    assert step == Probe(["a"])
    assert advance(operation, None, None) == Done({"response": "OK: Subscribe successful"})
    refused = session.subscribe(("b",))
    advance(refused, None, None)
    with pytest.raises(ServerError):
        advance(refused, None, ServerError("permission denied"))
    assert session.state.queues == ("a",)
    no_resume = make_session(queues=[], resume=False).subscribe(("c",))
    advance(no_resume, None, None)
    assert isinstance(advance(no_resume, {"response": "OK"}, None), Done)  # no probe without resume


def test_get_history_follows_pages():
    """get_history asks again from where a page ended until no queue has more."""
    operation = make_session().get_history(("q",), None)
    assert isinstance(advance(operation, None, None), Request)
    page = {"history": {"q": [{"coremq_id": 1, "coremq_string": "a"}]}, "more": {"q": True}}
    assert isinstance(advance(operation, page, None), Request)
    last = {"history": {"q": [{"coremq_id": 2, "coremq_string": "b"}]}}
    assert advance(operation, last, None) == Done({"q": ["a", "b"]})


def test_usable_links():
    """A request waits while there is no live link, and fails once the client ended or never started."""
    session = make_session()
    link = Link(session, wait=False, future=Future)
    assert session.check_usable(link, started=True)
    link.lose(ConnectionClosed("gone"))
    assert not session.check_usable(link, started=True)
    with pytest.raises(ConnectionClosed, match="call connect"):
        session.check_usable(None, started=False)
    session.end(ConnectionClosed("client is closed"), orderly=True)
    with pytest.raises(ConnectionClosed, match="client is closed"):
        session.check_usable(link, started=True)
    assert Gap("q", 1, 2).count == 2
