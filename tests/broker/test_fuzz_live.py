"""Hostile input at volume: a live broker fed random and malformed frames on many connections never dies,
and a well-behaved publisher and subscriber lose nothing meanwhile.

The frames mix random bytes and JSON with the hostile corpus (tests/hostile.py): nesting around every
limit, Unicode digits and look-alikes in names and sub-addresses, closed connections' ids, history
requests of what was stored. After the attack a TCP client and a browser on an in-process bridge pass
the health probe.
"""

from __future__ import annotations

import json
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coremq_client.codec import MAX_NESTING, encode_frame
from hostile import CORPUS, NAMES, nested_array, nested_object, tcp_probe
from wire import RawClient

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)
control_keys = st.sampled_from(["coremq_subscribe", "coremq_unsubscribe", "coremq_options", "coremq_gethistory",
                                "coremq_status", "coremq_admin", "coremq_bogus", "coremq_sender", "plain"])
queue_names = (st.sampled_from(["own", "good", "x", "a b", "", "own/sub", "\u00e9", "own/\u00b2", "own/\u0663",
                                 "closed", "closed/1", "other", "other/\u00b2"])
               | st.sampled_from([case.name for case in NAMES if "{own}" not in case.name]) | st.text(max_size=8))
hostile_bodies = (st.sampled_from([case.body for case in CORPUS])
                  | st.integers(MAX_NESTING - 3, 1100).flatmap(
                      lambda depth: st.sampled_from([nested_array(depth), nested_object(depth)])))


@st.composite
def hostile_ops(draw: st.DrawFn) -> list[tuple]:
    """A few things a hostile or broken client might send."""
    ops = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["junk", "frame", "control", "lying", "huge", "partial", "hostile", "history"]))
        if kind == "junk":
            ops.append(("raw", draw(st.binary(min_size=1, max_size=200))))
        elif kind == "frame":
            ops.append(("frame", draw(queue_names), json.dumps(draw(json_values)).encode()))
        elif kind == "control":
            ops.append(("frame", "own", json.dumps({draw(control_keys): draw(json_values)}).encode()))
        elif kind == "lying":
            body = json.dumps(draw(json_values)).encode()
            ops.append(("raw", b"+%d q %s" % (len(body) + draw(st.integers(-5, 5)), body)))
        elif kind == "huge":
            ops.append(("raw", b"+%d q " % draw(st.integers(2**20, 2**40))))
        elif kind == "hostile":
            ops.append(("frame", draw(queue_names), draw(hostile_bodies)))
        elif kind == "history":
            ops.append(("frame", "own", json.dumps({"coremq_gethistory": draw(
                st.lists(queue_names, max_size=3) | st.dictionaries(queue_names, st.none() | st.integers()))}).encode()))
        else:
            ops.append(("raw", encode_frame("q", b'{"a": [1, 2, 3]}')[: draw(st.integers(1, 10))]))
    return ops


class GoodClients:
    """A publisher sending numbered messages and a subscriber checking it gets each once, in order."""

    def __init__(self, host: str, port: int) -> None:
        self.sub = RawClient(host, port)
        assert self.sub.control({"coremq_subscribe": ["good"]})["response"] == "OK: Subscribe successful"
        self.pub = RawClient(host, port)
        self.sent = 0
        self.received: list[int] = []
        self.stop = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def publish_some(self, count: int) -> None:
        for _ in range(count):
            self.pub.send("good", {"seq": self.sent})
            assert self.pub.read()[1]["response"] == "OK: Message sent"
            self.sent += 1

    def _read(self) -> None:
        while not self.stop.is_set():
            queue, message = self.sub.read()
            if queue == "good" and message.get("coremq_sender") == self.pub.id:
                self.received.append(message["seq"])


def send_ops(host: str, port: int, ops: list[tuple], ids: dict[str, str]) -> None:
    """Send ``ops`` on a new connection; ``own``, ``closed`` and ``other`` stand for ids (``ids`` has the last two)."""
    client = RawClient(host, port, timeout=2)
    try:
        for op in ops:
            if op[0] == "raw":
                client.send_raw(op[1])
            else:
                owner, slash, sub = op[1].partition("/")
                queue = {"own": client.id, **ids}.get(owner, owner) + slash + sub
                client.send_raw(b"+%d %s %s" % (len(queue.encode()) + 1 + len(op[2]), queue.encode(), op[2]))
    except OSError:
        pass  # the broker may rightly have closed on us
    finally:
        client.sock.close()


def test_fuzzed_connections_do_not_hurt_the_broker_or_good_clients(broker):
    """Hundreds of hostile connections, some at once, leave the broker serving, the good clients complete and
    the probes passing."""
    good = GoodClients(broker.host, broker.port)
    gone = RawClient(broker.host, broker.port)
    gone.close()
    ids = {"closed": gone.id, "other": good.sub.id}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(hostile_ops(), min_size=1, max_size=4))
    def attack(batches: list[list[tuple]]) -> None:
        threads = [threading.Thread(target=send_ops, args=(broker.host, broker.port, ops, ids)) for ops in batches]
        for thread in threads:
            thread.start()
        good.publish_some(3)
        for thread in threads:
            thread.join(10)

    attack()
    good.publish_some(1)
    deadline = threading.Event()
    for _ in range(200):
        if len(good.received) >= good.sent:
            break
        deadline.wait(0.02)
    good.stop.set()
    assert good.received == list(range(good.sent))
    tcp_probe(broker.host, broker.port)
    fresh = RawClient(broker.host, broker.port)
    assert fresh.welcome["response"].startswith("OK:")
    for _ in range(250):  # the last hostile sockets may still be closing
        status = fresh.control({"coremq_status": True})
        if status["connections"] == 3:
            break
        deadline.wait(0.02)
    assert status["connections"] == 3  # the good pair and this one: every hostile connection was cleaned up
