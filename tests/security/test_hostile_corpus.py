"""The hostile corpus against the real processes: run_coremq serving the web (browsers on its in-process
bridge), a separate daphne (browsers on a RemoteLink), and durable history across a restart. After each
case a TCP client and a browser (the ``websockets`` package) must pass the health probe: a welcome, a
subscription, a publish and its delivery within a second."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from coremq_client.codec import MAX_NESTING, encode_frame
from hostile import CORPUS, Case, browser_accepts, nested_array, nested_object, tcp_probe
from security_world import Server, _env, migrated_world, run_coremq
from status_site import free_port, wait_for_port
from wire import RawClient

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "db.sqlite3"
    migrated_world(path)
    return path


def run_coremq_with_web(database: Path, coremq: dict[str, Any] | None = None) -> tuple[Server, int, int]:
    """``manage.py run_coremq`` serving the web too; return it, its broker port and its web port."""
    port, web_port = free_port(), free_port()
    server = Server([sys.executable, "manage.py", "run_coremq", "--port", str(port), "--web-port", str(web_port)],
                    _env(database, {"PORT": port, **(coremq or {})}))
    server.wait_for("CoreMQ web app on")
    return server, port, web_port


@pytest.fixture(scope="module")
def processes(database: Path) -> Iterator[dict[str, tuple[int, int]]]:
    """run_coremq with its web side, and a daphne linked to it: {"in-process": (tcp, web), "remote": (tcp, web)}."""
    broker, port, web_port = run_coremq_with_web(database)
    daphne_port = free_port()
    daphne = Server([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(daphne_port),
                     "coremq_project.asgi:application"], _env(database, {"PORT": port}))
    try:
        wait_for_port(daphne_port, daphne)
        yield {"in-process": (port, web_port), "remote": (port, daphne_port)}
    finally:
        daphne.stop()
        broker.stop()


class Browser:
    """A browser's WebSocket (the ``websockets`` client), speaking the JSON frames of docs/websocket.md."""

    def __init__(self, web_port: int) -> None:
        self._connecting = connect(f"ws://127.0.0.1:{web_port}/ws/coremq/", origin=f"http://127.0.0.1:{web_port}",
                                   open_timeout=10)
        self.socket: ClientConnection = self._connecting.__enter__()
        self.kept: list[dict] = []  # frames read while looking for another
        self.welcome = self.next("welcome", timeout=10)
        self.id: str = self.welcome["connection_id"]
        self.refs = 0

    def next(self, kind: str = "message", timeout: float = 5.0) -> dict:
        """The next frame of type ``kind`` (frames of other types before it are dropped)."""
        while self.kept:
            frame = self.kept.pop(0)
            if frame["type"] == kind:
                return frame
        while True:
            frame = json.loads(self.socket.recv(timeout))
            if frame["type"] == kind:
                return frame

    def request(self, text: str) -> dict:
        """Send one text frame holding a request (``{ref}`` in it is filled in); return its answer or error.

        Messages read meanwhile are kept for :meth:`next` (over a remote link a browser's own
        publish may reach it before the answer does).
        """
        self.refs += 1
        ref = f"r{self.refs}"
        self.socket.send(text.replace("{ref}", ref))
        while True:
            frame = json.loads(self.socket.recv(5))
            if frame.get("ref") == ref and frame["type"] != "message" or (
                    frame["type"] == "error" and frame.get("ref") is None):
                return frame
            self.kept.append(frame)

    def subscribe(self, *queues: str) -> dict:
        return self.request(json.dumps({"action": "subscribe", "queues": list(queues), "ref": "{ref}"}))

    def close(self) -> None:
        self._connecting.__exit__(None, None, None)


def browser_probe(web_port: int) -> None:
    """The health probe of a browser: a welcome, a subscription, a publish, its delivery within a second."""
    browser = Browser(web_port)
    try:
        assert browser.subscribe("probe")["type"] == "subscribed"
        answer = browser.request(json.dumps({"action": "publish", "queue": "probe", "message": {"p": browser.id},
                                             "ref": "{ref}"}))
        assert answer["type"] == "published", answer
        assert browser.next(timeout=1.0)["message"] == {"p": browser.id}
    finally:
        browser.close()


def publish(client: RawClient, queue: str, body: bytes) -> dict:
    client.send_raw(encode_frame(queue, body))
    name, reply = client.read()
    assert name == client.id and "coremq_sender" not in reply, reply
    return reply


def publish_request(case: Case, queue: str) -> str | None:
    """A browser's publish of ``case`` as its message, as text; None if no text frame can carry it."""
    return None if case.text is None else '{"action":"publish","queue":%s,"message":%s,"ref":"{ref}"}' % (
        json.dumps(queue), case.text)


@pytest.mark.parametrize("link", ["in-process", "remote"])
def test_the_corpus_reaches_browsers(processes: dict[str, tuple[int, int]], link: str) -> None:
    """Every case sent by TCP (to a queue, to a browser's id) or by a browser is taken or refused as over TCP; a
    browser gets each one taken; stray sub-addresses of the bridge reach nobody; probes pass after each case."""
    port, web_port = processes[link]
    page, writer = Browser(web_port), Browser(web_port)
    queue = f"hq-{link}"
    assert page.subscribe(queue)["type"] == "subscribed"
    tcp = RawClient("127.0.0.1", port)
    for case in CORPUS:
        for target in (queue, page.id):
            reply = publish(tcp, target, case.body)
            assert reply["response"].startswith("OK:" if case.accepted else "ERROR:"), (case, reply)
            if case.accepted:
                frame = page.next()
                assert (frame["queue"], frame["id"]) == (target, reply["id"]), case
        request = publish_request(case, queue)
        if request is None:  # not UTF-8: the web server closes the WebSocket (1007), nothing else happens
            writer.socket.send(b'{"action":"publish","queue":"x","message":' + case.body + b"}", text=True)
            with pytest.raises(ConnectionClosed):
                writer.next()
            writer = Browser(web_port)
        else:
            answer = writer.request(request)
            assert answer["type"] == ("published" if browser_accepts(case) else "error"), (case, answer)
            if browser_accepts(case):
                assert page.next()["id"] == answer["id"], case
        history = page.request(json.dumps({"action": "history", "queues": [queue], "ref": "{ref}"}))
        assert history["type"] == "history", (case, history)
        tcp_probe("127.0.0.1", port)
        browser_probe(web_port)
    bridge = page.id.rpartition("/")[0]
    for sub in ("\u00b2", "\u0663", "\uff11", "03", "+1", "0"):
        assert publish(tcp, f"{bridge}/{sub}", b'{"stray":1}')["response"] == "OK: Message sent"
        tcp_probe("127.0.0.1", port)
        browser_probe(web_port)
    assert publish(tcp, page.id, b'{"last":1}')["response"] == "OK: Message sent"
    assert page.next()["message"] == {"last": 1}  # no stray message came before it: the page's socket lives on
    page.close()
    writer.close()


@pytest.mark.parametrize("link", ["in-process", "remote"])
def test_a_browser_cannot_take_over_a_closed_browsers_id(processes: dict[str, tuple[int, int]], link: str) -> None:
    """A closed browser's id (and a closed TCP connection's) is refused to a newcomer; what is sent there reaches nobody."""
    port, web_port = processes[link]
    gone, newcomer = Browser(web_port), Browser(web_port)
    gone_tcp = RawClient("127.0.0.1", port)
    gone.close()
    gone_tcp.close()
    for name in (gone.id, gone_tcp.id, gone_tcp.id + "/1"):
        answer = newcomer.subscribe(name)
        assert answer["type"] == "error" and "private queue" in answer["error"], answer
    tcp = RawClient("127.0.0.1", port)
    assert publish(tcp, gone.id, b'{"for":"gone"}')["response"] == "OK: Message sent"  # its bridge lives on
    assert publish(tcp, gone_tcp.id, b'{"for":"gone"}')["response"].startswith("ERROR: no such connection")
    assert publish(tcp, newcomer.id, b'{"for":"newcomer"}')["response"] == "OK: Message sent"
    assert newcomer.next()["message"] == {"for": "newcomer"}  # the first message it gets is its own
    newcomer.close()


browser_frames = st.one_of(
    st.sampled_from([case.text for case in CORPUS if case.text is not None]),
    st.text(max_size=40),
    st.integers(MAX_NESTING - 2, 1100).map(lambda depth: nested_array(depth).decode()),
    st.integers(MAX_NESTING - 2, 1100).map(
        lambda depth: '{"action":"publish","queue":"fuzz","message":%s}' % nested_array(depth).decode()),
    st.builds(lambda queue, message: json.dumps({"action": "publish", "queue": queue, "message": message}),
              st.text(max_size=12), st.recursive(st.text(max_size=5) | st.integers(), lambda inner: st.lists(inner)
                                                  | st.dictionaries(st.text(max_size=5), inner), max_leaves=8)),
    st.sampled_from(["subscribe", "history", "unsubscribe", "auth", "publish"]).flatmap(
        lambda action: st.builds(lambda queues: json.dumps({"action": action, "queues": queues, "queue": "q",
                                                            "since": {"q": 2**70}, "token": ""}),
                                 st.lists(st.text(max_size=8), max_size=3))),
).map(lambda text: ("browser", text))
tcp_frames = st.tuples(
    st.just("tcp"),
    st.sampled_from(["fuzz", "{page}", "{bridge}/"]) | st.text(max_size=8).map(lambda sub: "{bridge}/" + sub),
    st.sampled_from([case.body for case in CORPUS]) | st.integers(MAX_NESTING - 2, 1100).flatmap(
        lambda depth: st.sampled_from([nested_array(depth), nested_object(depth)])),
)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(browser_frames | tcp_frames, min_size=1, max_size=6))
def fuzz(ports: tuple[int, int], page: Browser, ops: list[tuple]) -> None:
    """Send ``ops`` from a new browser and a new TCP client, then probe both kinds of client."""
    port, web_port = ports
    browser, tcp = Browser(web_port), RawClient("127.0.0.1", port)
    try:
        for op in ops:
            if op[0] == "browser":
                browser.socket.send(op[1])
            else:
                queue = op[1].replace("{page}", page.id).replace("{bridge}", page.id.rpartition("/")[0])
                tcp.send_raw(b"+%d %s %s" % (len(queue.encode()) + 1 + len(op[2]), queue.encode(), op[2]))
    finally:
        browser.close()
        tcp.close()
    tcp_probe("127.0.0.1", port)
    browser_probe(web_port)


@pytest.mark.parametrize("link", ["in-process", "remote"])
def test_fuzzed_browsers_and_publishers(processes: dict[str, tuple[int, int]], link: str) -> None:
    """Random and hostile frames from browsers, and from TCP to a browser's queue and its bridge's sub-addresses,
    leave browsers and TCP clients passing the probe, and the subscribed page connected."""
    port, web_port = processes[link]
    page = Browser(web_port)
    assert page.subscribe("fuzz")["type"] == "subscribed"
    fuzz(processes[link], page)
    tcp = RawClient("127.0.0.1", port)
    assert publish(tcp, page.id, b'{"last":1}')["response"] == "OK: Message sent"
    while page.next()["message"] != {"last": 1}:  # what the fuzz published to it comes first
        pass
    page.close()


def test_durable_history_of_the_corpus_survives_a_restart(database: Path, tmp_path: Path) -> None:
    """With every queue durable, the accepted cases are on disk, and after a restart TCP and browser history
    requests return them all; probes pass before and after."""
    coremq = {"DURABLE_ALL": True, "DURABLE_PATH": str(tmp_path / "history.sqlite3"), "HISTORY_LENGTH": 1000}
    server, port = run_coremq(database, coremq=coremq)
    try:
        tcp = RawClient("127.0.0.1", port)
        taken = []
        for case in CORPUS:
            reply = publish(tcp, "durable", case.body)
            assert reply["response"].startswith("OK:" if case.accepted else "ERROR:"), (case, reply)
            if case.accepted:
                taken.append(reply["id"])
            tcp_probe("127.0.0.1", port)
        assert taken == list(range(1, len(taken) + 1))
        before = tcp.control({"coremq_gethistory": ["durable"]})["history"]["durable"]
        tcp.close()
    finally:
        server.stop()
    server, port, web_port = run_coremq_with_web(database, coremq)
    try:
        tcp = RawClient("127.0.0.1", port)
        after = tcp.control({"coremq_gethistory": ["durable"]})["history"]["durable"]
        assert after == before and [message["coremq_id"] for message in after] == taken
        browser = Browser(web_port)
        answer = browser.request(json.dumps({"action": "history", "queues": ["durable"], "ref": "{ref}"}))
        assert [entry["id"] for entry in answer["history"]["durable"]] == taken
        browser.close()
        tcp_probe("127.0.0.1", port)
        browser_probe(web_port)
    finally:
        server.stop()

