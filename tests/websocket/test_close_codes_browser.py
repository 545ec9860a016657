"""coremq.js in Chromium acting on the close codes of a real run_coremq: 4008 ends it, 4012 is reconnected after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coremq_client import MessageQueue

from pages import client_page, events
from tabs import issue_token, revoke_token, staff_user
from webservers import Servers, free_port

pytestmark = pytest.mark.timeout(180)

WAIT = 30_000  # ms: how long a page may take to show something (a wait, not a measurement)


def test_coremq_js_stops_reconnecting_on_4008_and_emits_revoked(servers: Servers, new_page: Any,
                                                                 e2e_database: Path) -> None:
    """Revoked credentials (or a refused ?token=) close with 4008: coremq.js emits "revoked" and stays closed."""
    secret, token_id = issue_token(e2e_database, "dora")
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    page = client_page(new_page, web_port, f"?token={secret}")
    page.wait_for_function("mq.state === 'open' && mq._queues.get('q').settled", timeout=WAIT)
    refused = client_page(new_page, web_port, "?token=cmq_wrong")
    revoke_token(e2e_database, token_id)
    for tab, error in ((page, "credentials revoked"), (refused, "authentication failed")):
        tab.wait_for_function("events.some(([name]) => name === 'revoked')", timeout=WAIT)
        assert events(tab, "revoked") == [{"code": 4008, "reason": "", "error": error}]
        tab.wait_for_timeout(1000)  # ample for a reconnection at maxDelay 100 ms, were one made
        assert tab.evaluate("[mq.state, window.sockets]") == ["closed", 1]
        assert events(tab, "state")[-1] == "closed" and tab.errors == []


def test_every_tab_recovers_after_an_administrator_disconnects_the_bridge(servers: Servers, new_page: Any,
                                                                         e2e_database: Path) -> None:
    """The in-process bridge disconnected by an administrator: tabs get 4012, reconnect by themselves, miss nothing."""
    staff, _ = issue_token(e2e_database, "admin-browser", staff=True)
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    tabs = [client_page(new_page, web_port) for _ in range(2)]
    for tab in tabs:
        tab.wait_for_function("mq.state === 'open' && mq._queues.get('q').settled", timeout=WAIT)
    with MessageQueue("127.0.0.1", port, token=staff) as admin:
        admin.publish("q", "before")
        for tab in tabs:
            tab.wait_for_function("got.length === 1", timeout=WAIT)
        status = admin.status(connections=True)
        [bridge] = [c["id"] for c in status["connection_list"] if c["transport"] == "websocket-bridge"]
        admin.admin("disconnect", connection=bridge)
        admin.publish("q", "while reconnecting")
        for tab in tabs:
            tab.wait_for_function("events.some(([name, value]) => name === 'close' && value.code === 4012)",
                                  timeout=WAIT)
            tab.wait_for_function("mq.state === 'open' && mq.connectionId !== null", timeout=WAIT)
        admin.publish("q", "after")
    for tab in tabs:
        tab.wait_for_function("got.length === 3", timeout=WAIT)
        assert [item[:2] for item in tab.evaluate("got")] == [[1, "before"], [2, "while reconnecting"], [3, "after"]]
        assert events(tab, "gap") == [] and events(tab, "revoked") == [] and tab.errors == []
        assert tab.evaluate("window.sockets") == 2


def test_tabs_of_a_separate_daphne_stay_open_when_its_bridge_is_disconnected(servers: Servers, new_page: Any,
                                                                            e2e_database: Path) -> None:
    """A separate daphne's bridge disconnected by an administrator reconnects: tabs stay open, get a new id, miss nothing."""
    staff, _ = issue_token(e2e_database, "admin-browser-separate", staff=True)
    port, daphne_port = free_port(), free_port()
    servers.run_coremq(port)
    servers.daphne(port, daphne_port)
    tabs = [client_page(new_page, daphne_port) for _ in range(2)]
    for tab in tabs:
        tab.wait_for_function("mq.state === 'open' && mq._queues.get('q').settled", timeout=WAIT)
    first = tabs[0].evaluate("mq.connectionId")
    with MessageQueue("127.0.0.1", port, token=staff) as admin:
        admin.publish("q", "before")
        for tab in tabs:
            tab.wait_for_function("got.length === 1", timeout=WAIT)
        bridge = first.rpartition("/")[0]
        admin.admin("disconnect", connection=bridge)
        admin.publish("q", "while reconnecting")
        for tab in tabs:  # the new welcome: the bridge's new connection id
            tab.wait_for_function("(old) => mq.connectionId !== null && !mq.connectionId.startsWith(old + '/')",
                                  arg=bridge, timeout=WAIT)
        admin.publish("q", "after")
    for tab in tabs:
        tab.wait_for_function("got.length === 3", timeout=WAIT)
        assert [item[:2] for item in tab.evaluate("got")] == [[1, "before"], [2, "while reconnecting"], [3, "after"]]
        assert events(tab, "gap") == [] and events(tab, "close") == [] and tab.errors == []
        assert tab.evaluate("window.sockets") == 1


def test_a_page_refused_with_4013_connects_once_the_broker_is_up(servers: Servers, new_page: Any) -> None:
    """A separate daphne without its broker refuses the page with 4013; coremq.js retries and opens once it is up."""
    port, daphne_port = free_port(), free_port()
    servers.daphne(port, daphne_port)  # nothing listens on the broker port yet
    page = client_page(new_page, daphne_port)
    page.wait_for_function("events.filter(([name, value]) => name === 'close' && value.code === 4013).length >= 2",
                           timeout=WAIT)
    servers.run_coremq(port)
    page.wait_for_function("mq.state === 'open' && mq._queues.get('q').settled", timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("q", "up")
    page.wait_for_function("got.length === 1", timeout=WAIT)
    assert events(page, "revoked") == [] and page.errors == []


def test_the_status_pages_disconnect_of_the_bridge_row(servers: Servers, new_page: Any, e2e_database: Path) -> None:
    """The status page's Disconnect on the websocket-bridge row: every coremq.js tab gets 4012 and recovers by itself."""
    staff_user(e2e_database, "status-admin", "status-admin-pw-1")
    port, web_port = free_port(), free_port()
    servers.run_coremq(port, web_port)
    tabs = [client_page(new_page, web_port) for _ in range(2)]
    for tab in tabs:
        tab.wait_for_function("mq.state === 'open' && mq._queues.get('q').settled", timeout=WAIT)
    bridge = tabs[0].evaluate("mq.connectionId").rpartition("/")[0]
    status = new_page(f"http://127.0.0.1:{web_port}/admin/login/?next=/admin/coremq/status/")
    status.on("dialog", lambda dialog: dialog.accept())
    status.fill("#id_username", "status-admin")
    status.fill("#id_password", "status-admin-pw-1")
    status.click("input[type=submit]")
    status.locator(f'#cmq-connections tr[data-id="{bridge}"] button[data-action="disconnect"]').click(timeout=WAIT)
    for tab in tabs:
        tab.wait_for_function("events.some(([name, value]) => name === 'close' && value.code === 4012)", timeout=WAIT)
        tab.wait_for_function("(old) => mq.state === 'open' && mq.connectionId !== null"
                              " && !mq.connectionId.startsWith(old + '/')", arg=bridge, timeout=WAIT)
    with MessageQueue("127.0.0.1", port) as client:
        client.publish("q", "after")
    for tab in tabs:
        tab.wait_for_function("got.length === 1", timeout=WAIT)
        assert tab.errors == [] and events(tab, "revoked") == []
