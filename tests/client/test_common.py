"""The clients' pure helpers: backoff, session state, reply routing. No sockets, no event loop."""

from __future__ import annotations

import itertools
from concurrent.futures import Future

import pytest

from coremq_client._common import (
    ErrorReporter,
    PendingReplies,
    SessionState,
    backoff_delays,
    check_backoff,
    credentials_from,
    handshake_reply,
    history_messages,
    route,
    settle,
    since_map,
    user_of,
)
from coremq_client.codec import encode_frame
from coremq_client.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    FrameHeaderError,
    FrameTooLarge,
    LocalUsageError,
    PermissionDenied,
    ServerError,
)
from coremq_client.protocol import Bye, ClientProtocol, Delivery, Reply, error_for


def test_backoff_doubles_with_jitter_and_is_bounded():
    """Delays double from the initial value, stay within [step/2, step] and never pass the maximum."""
    low = list(itertools.islice(backoff_delays(0.1, 1.0, rand=lambda: 0.0), 6))
    high = list(itertools.islice(backoff_delays(0.1, 1.0, rand=lambda: 1.0), 6))
    assert high == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert low == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert max(itertools.islice(backoff_delays(0.1, 1.0), 100)) <= 1.0


def test_backoff_arguments_are_checked():
    """A zero backoff (a busy loop) or a maximum below the initial delay is refused."""
    with pytest.raises(ValueError):
        check_backoff(0, 1)
    with pytest.raises(ValueError):
        check_backoff(2, 1)


def test_session_state_replays_queues_and_options():
    """The replay subscribes every recorded queue and sets the options in force, None removing one."""
    state = SessionState(["a"], {"echo": True, "gone": None})
    assert state.add_queues(["b", "a"]) == ["b"]
    state.discard_queues(["a"])
    previous = state.update_options({"reply": False, "echo": None})
    assert state.options == {"reply": False} and state.replies_off
    state.restore_options(previous)
    assert state.options == {"echo": True}
    protocol = ClientProtocol()
    protocol.receive_data(encode_frame("00000000-0000-0000-0000-000000000000", b'{"response":"OK"}'))
    frames = state.replay(protocol)
    assert [n for n, _ in frames] == [1, 2]
    assert frames[0][1].endswith(b'{"coremq_subscribe":["b"]}')
    assert frames[1][1].endswith(b'{"coremq_options":{"echo":true}}')


def test_a_single_queue_name_is_not_split():
    """queues="news" means the queue news, not the queues n, e, w and s."""
    assert SessionState("news").queues == ("news",)


def test_route_keeps_order_and_stops_at_bye():
    """Deliveries, replies and errors are sorted in order; nothing after a BYE is acted on."""
    events = [Delivery("q", "m1"), Reply(1, {}), FrameTooLarge(10, 5), Bye(), Delivery("q", "late")]
    routed = route(events)
    assert [d.message for d in routed.stream] == ["m1"]
    assert [r.request for r in routed.replies] == [1]
    assert isinstance(routed.errors[0], FrameTooLarge)
    assert routed.orderly and isinstance(routed.ended, ConnectionClosed)
    fatal = route([FrameHeaderError("bad")])
    assert fatal.ended is not None and not fatal.orderly


def test_settle_completes_futures_and_reports_unclaimed_errors():
    """A reply completes its own future; an ERROR nobody waits for is reported, before later replies."""
    pending: PendingReplies[Future] = PendingReplies()
    mine, denied = Future(), Future()
    pending.add(2, mine)
    pending.add(3, denied)
    order: list[str] = []
    mine.add_done_callback(lambda f: order.append("reply 2"))
    settle([
        Reply(1, {"response": "ERROR: lost one"}),
        Reply(2, {"response": "OK"}),
        Reply(3, {"response": "ERROR: permission denied: x"}),
        Reply(4, {"response": "OK: nobody waits"}),
    ], pending, lambda error: order.append(f"reported {error}"))
    assert mine.result() == {"response": "OK"}
    assert isinstance(denied.exception(), PermissionDenied) and denied.exception().request == 3
    assert order == ["reported lost one", "reply 2"]


def test_errors_carry_their_request_number_and_type():
    """error_for maps reasons to exception types and keeps the number of the request answered."""
    assert type(error_for("authentication failed", 4)) is AuthenticationFailed
    assert error_for("authentication failed", 4).request == 4
    assert isinstance(error_for("permission denied: status"), PermissionDenied)
    unclaimed: list[ServerError] = []
    settle([Reply(7, {"response": "ERROR: publish rate limit exceeded"})], PendingReplies(), unclaimed.append)
    assert unclaimed[0].request == 7 and unclaimed[0].reason == "publish rate limit exceeded"


def test_credentials_and_the_login_reply():
    """Credentials are a token or a username with a password; the login reply gives the user or raises."""
    assert credentials_from(None, None, None) is None
    assert credentials_from("t", None, None) == {"token": "t"}
    assert credentials_from(None, "u", "p") == {"username": "u", "password": "p"}
    assert user_of(Reply(1, {"response": "OK: Authenticated", "user": "bob", "staff": False})) == "bob"
    with pytest.raises(AuthenticationFailed):
        user_of(Reply(1, {"response": "ERROR: authentication failed"}))


def test_handshake_reply_keeps_other_events_and_stops_at_bye():
    """The login reply is picked out by number; deliveries before it are kept; a BYE or a refusal raises."""
    backlog: list = []
    found = handshake_reply([Delivery("me", "hi"), Reply(1, {"response": "OK"})], 1, backlog)
    assert found == Reply(1, {"response": "OK"}) and backlog == [Delivery("me", "hi")]
    with pytest.raises(ConnectionClosed):
        handshake_reply([Bye()], 1, [])
    with pytest.raises(ServerError, match="too many failed"):
        handshake_reply([Reply(None, {"response": "ERROR: too many failed authentications"})], 1, [])


def test_frames_sent_are_bounded_by_the_limit_the_broker_announced():
    """After a welcome announcing max_frame_size, larger frames are refused before sending, naming that limit."""
    protocol = ClientProtocol(max_frame_size=4096)
    welcome = b'{"response":"OK: Welcome from CoreMQ!","max_frame_size":100}'
    protocol.receive_data(encode_frame("00000000-0000-0000-0000-000000000000", welcome))
    assert protocol.send_limit == 100
    protocol.publish("q", "x" * 60)
    with pytest.raises(LocalUsageError, match="the broker's frame limit of 100"):
        protocol.publish("q", "x" * 100)
    roomy = ClientProtocol(max_frame_size=64)
    roomy.receive_data(encode_frame("id", b'{"response":"OK","max_frame_size":1000}'))
    assert roomy.send_limit == 64  # the smaller of the two


def test_pending_close_fails_waiters_and_refuses_new_ones():
    """Closing fails every waiting future with ConnectionClosed and refuses later ones."""
    pending: PendingReplies[Future] = PendingReplies()
    waiting = Future()
    pending.add(1, waiting)
    pending.close(ConnectionClosed("gone"))
    assert isinstance(waiting.exception(), ConnectionClosed)
    with pytest.raises(ConnectionClosed):
        pending.add(2, Future())


def test_history_messages_unwraps_and_accepts_the_earliest_format():
    """Stored strings and arrays are unwrapped; the earliest release's history under "response" is read too."""
    stored = [{"coremq_string": "s"}, {"coremq_array": [1]}, {"a": 1}]
    assert history_messages({"history": {"q": stored}}) == {"q": ["s", [1], {"a": 1}]}
    assert history_messages({"response": {"q": []}}) == {"q": []}


def test_since_map_forms():
    """since= takes one id for every queue, a mapping, or None."""
    assert since_map(["a", "b"], 3) == {"a": 3, "b": 3}
    assert since_map(["a"], {"a": 1}) == {"a": 1}
    assert since_map(["a"], None) is None
    with pytest.raises(TypeError):
        since_map(["a"], True)


def test_error_reporter_keeps_errors_and_survives_a_failing_callback():
    """Every reported error is kept; a callback that raises is logged, not propagated."""
    def broken(error: Exception) -> None:
        raise RuntimeError("callback bug")

    reporter = ErrorReporter(broken, keep=2)
    for n in range(3):
        reporter.report(ServerError(f"e{n}"))
    assert [str(e) for e in reporter.recent] == ["e1", "e2"]
