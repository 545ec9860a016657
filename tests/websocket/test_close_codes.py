"""The close codes a real WebSocket client receives from a real daphne, in-process (run_coremq) and separate.

daphne (autobahn) lets an application close only with 1000 or 3000-4999, and
the test communicator checks none of that; so each case runs the project's
servers as processes and reads the close frame with the ``websockets``
client, as a browser's ``close`` event would see it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coremq_broker.transports.websocket.bridge import CLOSE_CREDENTIALS, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER
from coremq_client import MessageQueue

from tabs import Tab, issue_token, revoke_token
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(120)

KINDS = ["in-process", "separate"]


def web(servers: Servers, kind: str) -> tuple[int, int]:
    """A broker and the web port serving /ws/coremq/ for it: run_coremq's own, or a separate daphne's."""
    port, web_port = free_port(), free_port()
    if kind == "in-process":
        servers.run_coremq(port, web_port)
        return port, web_port
    servers.run_coremq(port)
    daphne_port = free_port()
    servers.daphne(port, daphne_port)
    return port, daphne_port


def test_the_codes_are_ones_daphne_sends() -> None:
    """Every close code the bridge uses is one autobahn accepts: 1000 or 3000-4999."""
    for code in (CLOSE_CREDENTIALS, CLOSE_SERVICE_RESTART, CLOSE_TRY_AGAIN_LATER):
        assert code == 1000 or 3000 <= code <= 4999


def test_shutdown_of_run_coremq_closes_tabs_with_4012(servers: Servers) -> None:
    """When run_coremq stops, its browsers receive 4012 (the broker is restarting: reconnect)."""
    port, web_port = free_port(), free_port()
    server = servers.run_coremq(port, web_port)
    tabs = [Tab(web_port, "/ws/coremq/?queues=q") for _ in range(3)]
    for tab in tabs:
        tab.receive_type("subscribed")
    server.stop()
    assert [tab.closed() for tab in tabs] == [CLOSE_SERVICE_RESTART] * 3
    assert "invalid close code" not in "".join(server.output)


def test_shutdown_of_a_separate_daphne_closes_tabs_with_4012(servers: Servers) -> None:
    """When a separate daphne process stops, its browsers receive 4012 too."""
    port, daphne_port = free_port(), free_port()
    servers.run_coremq(port)
    daphne = servers.daphne(port, daphne_port)
    tabs = [Tab(daphne_port, "/ws/coremq/?queues=q") for _ in range(3)]
    for tab in tabs:
        tab.receive_type("subscribed")
    daphne.stop()
    assert [tab.closed() for tab in tabs] == [CLOSE_SERVICE_RESTART] * 3
    assert "invalid close code" not in "".join(daphne.output)


def test_a_broker_restart_under_a_separate_daphne_keeps_tabs_open(servers: Servers) -> None:
    """A separate daphne's bridge reconnects by itself: its browsers stay open and get a new welcome."""
    port, daphne_port = free_port(), free_port()
    broker = servers.run_coremq(port)
    servers.daphne(port, daphne_port)
    tab = Tab(daphne_port, "/ws/coremq/?queues=q")
    first = tab.receive_type("welcome")
    tab.receive_type("subscribed")
    broker.stop()
    servers.run_coremq(port)
    welcome = tab.receive_type("welcome")
    assert welcome["connection_id"] != first["connection_id"] and welcome["epoch"] != first["epoch"]
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("q", "after the restart")
    assert tab.receive_type("message")["message"] == "after the restart"
    assert tab.code is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_refused_token_is_closed_with_4008(servers: Servers, e2e_database: Path, kind: str) -> None:
    """A ?token= that does not log in (wrong or revoked) is answered "authentication failed" and closed with 4008."""
    secret, token_id = issue_token(e2e_database, "revoked-before")
    revoke_token(e2e_database, token_id)
    _, web_port = web(servers, kind)
    for token in ("cmq_wrong", secret):
        tab = Tab(web_port, f"/ws/coremq/?token={token}")
        assert tab.closed() == CLOSE_CREDENTIALS
        assert tab.errors() == ["authentication failed"]


@pytest.mark.parametrize("kind", KINDS)
def test_revoking_a_token_closes_its_tabs_with_4008(servers: Servers, e2e_database: Path, kind: str) -> None:
    """A browser logged in with a token that is then revoked is told so and closed with 4008; others stay open."""
    secret, token_id = issue_token(e2e_database, f"carol-{kind}")  # before the servers: they know the user
    _, web_port = web(servers, kind)
    revoked = Tab(web_port, f"/ws/coremq/?token={secret}&queues=q")
    revoked.receive_type("subscribed")
    other = Tab(web_port, "/ws/coremq/?queues=q")
    other.receive_type("subscribed")
    revoke_token(e2e_database, token_id)
    assert revoked.closed() == CLOSE_CREDENTIALS
    assert "credentials revoked" in revoked.errors()
    answer = other.request({"action": "publish", "queue": "q", "message": "still here", "ref": 1})
    assert answer["type"] == "published" and other.code is None


def test_an_unreachable_broker_closes_with_4013(servers: Servers) -> None:
    """A separate daphne whose broker cannot be reached refuses browsers with 4013 (try again later), saying why."""
    daphne_port = free_port()
    servers.daphne(free_port(), daphne_port)  # nothing listens on the broker port
    tab = Tab(daphne_port)
    assert tab.closed() == CLOSE_TRY_AGAIN_LATER
    assert tab.errors() and tab.errors()[0].startswith("the broker is unavailable")


def bridge_ids(client: MessageQueue, transport: str) -> list[str]:
    status = client.status(connections=True)
    return [c["id"] for c in status["connection_list"] if c["transport"] == transport]


def test_an_administrators_disconnect_of_the_in_process_bridge(servers: Servers, e2e_database: Path) -> None:
    """Disconnecting run_coremq's websocket-bridge closes every browser with 4012; a new connection works at once."""
    staff, _ = issue_token(e2e_database, "admin-in-process", staff=True)
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    tabs = [Tab(web_port, "/ws/coremq/?queues=q") for _ in range(2)]
    for tab in tabs:
        tab.receive_type("subscribed")
    with MessageQueue("127.0.0.1", port, token=staff) as admin:
        [bridge] = bridge_ids(admin, "websocket-bridge")
        assert admin.admin("disconnect", connection=bridge)["response"] == "OK: Disconnected"
    assert [tab.closed() for tab in tabs] == [CLOSE_SERVICE_RESTART] * 2
    again = Tab(web_port, "/ws/coremq/?queues=q")
    assert not again.receive_type("welcome")["connection_id"].startswith(bridge)
    again.receive_type("subscribed")
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("q", "after the disconnect")
    assert again.receive_type("message")["message"] == "after the disconnect"


def test_an_administrators_disconnect_of_a_separate_bridge(servers: Servers, e2e_database: Path) -> None:
    """Disconnecting a separate daphne's bridge connection keeps its browsers open: it reconnects and welcomes them anew."""
    staff, _ = issue_token(e2e_database, "admin-separate", staff=True)
    port, daphne_port = free_port(), free_port()
    servers.run_coremq(port)
    servers.daphne(port, daphne_port)
    tab = Tab(daphne_port, "/ws/coremq/?queues=q")
    first = tab.receive_type("welcome")
    tab.receive_type("subscribed")
    bridge = first["connection_id"].rpartition("/")[0]
    with MessageQueue("127.0.0.1", port, token=staff) as admin:
        assert bridge in bridge_ids(admin, "tcp")
        assert admin.admin("disconnect", connection=bridge)["response"] == "OK: Disconnected"
    welcome = tab.receive_type("welcome")
    assert not welcome["connection_id"].startswith(bridge)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("q", "after the disconnect")
    assert tab.receive_type("message")["message"] == "after the disconnect"
    assert tab.code is None
