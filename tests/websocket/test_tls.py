"""The WebSocket endpoint over TLS: daphne on its own ``ssl:`` endpoint, with real clients.

Under daphne the bridge writes frames itself (``transports/websocket/daphne.py``);
over TLS it must write through Twisted's TLS layer, never to the socket beneath
it, and still cut off a browser that stops reading. The page's ``https``
origin is the site's own over ``wss`` (daphne's scope names no scheme).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from coremq_client import MessageQueue

from pages import CLIENT
from rawsocket import RawWebSocket, flood_stuck_and_reader
from webservers import Server, Servers, free_port

sys.path.append(str(Path(__file__).resolve().parents[1] / "client"))  # selfsigned
from selfsigned import tls_contexts  # noqa: E402

pytestmark = pytest.mark.timeout(180)

WAIT = 30_000  # ms: how long a page may take to show something (a wait, not a measurement)
MESSAGES = 300
PAD = "x" * 30_000  # 300 messages of 30 kB: far more than the socket buffers and the bound hold


class TLSSite:
    """A broker (``run_coremq --no-web``) and a separate daphne serving the project over TLS only."""

    def __init__(self, servers: Servers, directory: Path, *, max_write_buffer: int | None = None) -> None:
        self.server_tls, self.client_tls = tls_contexts(directory)
        self.port, self.web_port = free_port(), free_port()
        self.broker = servers.run_coremq(self.port)
        endpoint = (f"ssl:{self.web_port}:interface=127.0.0.1:privateKey={directory / 'key.pem'}"
                    f":certKey={directory / 'cert.pem'}")
        env: dict[str, str] = {}
        if max_write_buffer is not None:
            env["COREMQ_E2E_MAX_WRITE_BUFFER"] = str(max_write_buffer)
        self.daphne = servers._start(Server([sys.executable, "-m", "daphne", "-e", endpoint,
                                             "coremq_project.asgi:application"],
                                            broker_port=self.port, database=servers.database, env=env))
        self._wait_for_https()

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.web_port}/ws/coremq/"

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self.web_port}"

    def _wait_for_https(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.origin}/static/coremq/coremq.js", timeout=2,
                                            context=self.client_tls) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.daphne.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no HTTPS on port {self.web_port}:\n{''.join(self.daphne.output)}")
            time.sleep(0.05)

    def output(self) -> str:
        return "".join(self.daphne.output)


@pytest.fixture
def site(servers: Servers, tmp_path: Path) -> TLSSite:
    return TLSSite(servers, tmp_path)


def test_the_python_client_over_wss_gets_every_message_whole_and_in_order(site: TLSSite) -> None:
    """MessageQueue("wss://…") to daphne's TLS endpoint: welcome, messages larger than a TLS record, publishes."""
    sizes = [10, 20_000, 60_000, 1, 40_000] * 20  # up to nearly the 64 KiB frame limit, over many TLS records
    with MessageQueue(site.url, ssl=site.client_tls, queues=["tls"]) as browser, \
            MessageQueue("127.0.0.1", site.port, queues=["back"]) as tcp:
        assert browser.connection_id is not None and "/" in browser.connection_id  # a browser of the bridge
        for n, size in enumerate(sizes):
            tcp.publish("tls", {"n": n, "pad": "y" * size})
        received = []
        for _ in sizes:
            delivery = browser.receive(timeout=30)
            assert delivery is not None
            received.append((delivery.message["n"], len(delivery.message["pad"])))
        assert received == list(enumerate(sizes))
        reply = browser.publish("back", {"from": "wss"})
        assert reply is not None and reply["id"] >= 1
        delivery = tcp.receive(timeout=30)
        assert delivery is not None and delivery.message["from"] == "wss"
        assert delivery.sender == browser.connection_id
    assert "SSL error" not in site.output() and "fast path off" not in site.output()


def test_the_sites_own_https_origin_may_open_wss_and_the_http_one_may_not(site: TLSSite) -> None:
    """Over wss the site's own origin is https://host:port (no CSRF_TRUSTED_ORIGINS needed); http:// is another."""
    with connect(site.url, ssl=site.client_tls, origin=site.origin) as websocket:  # type: ignore[arg-type]
        assert json.loads(websocket.recv(timeout=30))["type"] == "welcome"
    with pytest.raises(InvalidStatus) as refused:
        connect(site.url, ssl=site.client_tls, origin=f"http://127.0.0.1:{site.web_port}")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert "origin 'http://127.0.0.1" in site.output()


def test_a_browser_that_does_not_read_over_wss_is_cut_off(servers: Servers, tmp_path: Path) -> None:
    """Past MAX_WRITE_BUFFER unsent bytes a wss browser is disconnected, as over ws; a reading one gets all, in order."""
    site = TLSSite(servers, tmp_path, max_write_buffer=256 * 1024)
    stuck = RawWebSocket(site.web_port, "/ws/coremq/?queues=flood", receive_buffer=4096, tls=site.client_tls)
    stuck.receive_type("subscribed")
    reader = RawWebSocket(site.web_port, "/ws/coremq/?queues=flood", tls=site.client_tls)
    reader.receive_type("subscribed")
    flood_stuck_and_reader(stuck, reader, site.port, MESSAGES, PAD)
    assert "slow consumer" in site.output()
    assert "SSL error" not in site.output()


#: Records the URL of every WebSocket the page opens in window.urls.
_RECORD_URLS = """() => {
    window.urls = [];
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
        constructor(...args) {
            super(...args);
            window.urls.push(this.url);
        }
    };
}"""


def test_coremq_js_in_chromium_over_https_and_wss(site: TLSSite, new_page: Any) -> None:
    """A page served over https opens /ws/coremq/ as wss (relative URL), gets messages and publishes."""
    page = new_page(f"{site.origin}/static/coremq/coremq.js", ignore_https_errors=True)  # the self-signed certificate
    page.add_script_tag(url="/static/coremq/coremq.js")
    page.evaluate(_RECORD_URLS)
    page.evaluate(CLIENT, "/ws/coremq/")
    page.wait_for_function("mq.state === 'open' && mq._queues.get('q').settled", timeout=WAIT)
    assert page.evaluate("window.urls") == [site.url]
    with MessageQueue("127.0.0.1", site.port, queues=["from-page"]) as tcp:
        big = "z" * 50_000
        tcp.publish("q", "hello")
        tcp.publish("q", big)
        page.wait_for_function("got.length === 2", timeout=WAIT)
        assert page.evaluate("got.map(([, message]) => message.length)") == [5, 50_000]
        page.evaluate("mq.publish('from-page', {secure: true})")
        delivery = tcp.receive(timeout=30)
        assert delivery is not None and delivery.message["secure"] is True
    assert page.errors == [] and "SSL error" not in site.output()
