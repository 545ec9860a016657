"""The login throttle, re-login and the Origin check against run_coremq as a real process (TCP and web).

One ``run_coremq --port 0 --web-port 0`` serves every test of this module,
with ``MAX_AUTH_FAILURES = 6``. The throttle counts per address, so each test
comes from loopback addresses of its own (``127.0.0.N``, bound before
connecting) and per username, so each test guesses another user's password.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from coremq_broker.transports.websocket.bridge import CLOSE_TRY_AGAIN_LATER
from coremq_client.codec import FrameParser
from security_world import PASSWORDS, Server, World, _env, migrated_world
from wire import RawClient

pytestmark = pytest.mark.timeout(120)

LIMIT = 6
STATUS_TOKEN = "throttle-status-token"
TRUSTED = "https://app.example.test:8443"
BLOCKED = "ERROR: too many failed authentications"
FAILED = "ERROR: authentication failed"


class Site:
    """The run_coremq process: its broker and web ports, and its tokens."""

    def __init__(self, server: Server, port: int, web_port: int, world: World) -> None:
        self.server, self.port, self.web_port, self.world = server, port, web_port, world

    def status(self) -> dict[str, Any]:
        """The broker's part of /coremq/status.json (with the status token)."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}/coremq/status.json",
                                         headers={"Authorization": f"Bearer {STATUS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["broker"]

    def metrics(self) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.web_port}/metrics",
                                         headers={"Authorization": f"Bearer {STATUS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    database = tmp_path_factory.mktemp("throttle") / "db.sqlite3"
    world = migrated_world(database)
    env = {**_env(database, {"DEFAULT_POLICY": "deny", "MAX_AUTH_FAILURES": LIMIT, "STATUS_TOKEN": STATUS_TOKEN}),
           "COREMQ_TEST_TRUSTED_ORIGINS": json.dumps([TRUSTED]), "COREMQ_TEST_PROXY_SSL": "1"}
    server = Server([sys.executable, "manage.py", "run_coremq", "--port", "0", "--web-port", "0"], env)
    try:
        port = int(server.wait_for("CoreMQ broker listening on").split()[-2].rsplit(":", 1)[1])
        web = _line(server, "CoreMQ web app on")
        yield Site(server, port, int(web.rstrip("/\n").rsplit(":", 1)[1]), world)
    finally:
        server.stop()


def _line(server: Server, text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.output):
            if text in line:
                return line
        time.sleep(0.05)
    pytest.fail(f"no {text!r}:\n{''.join(server.output)}")


class From(RawClient):
    """A RawClient whose socket comes from the loopback address ``source`` (127.0.0.N)."""

    def __init__(self, source: str, port: int, *, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.parser = FrameParser(max_frame_size=2**31)
        self.pending = []
        frame = self.read_frame()
        self.id, self.welcome = frame.queue, json.loads(frame.body)


def auth(username: str, password: str) -> dict:
    return {"coremq_auth": {"username": username, "password": password}}


def answer(client: RawClient) -> str:
    """The reply to a login: its response, or BLOCKED with the connection closed after it."""
    frames = [reply for _, reply in [client.read()]]
    response = frames[0]["response"]
    if response == BLOCKED:
        assert client.read_until_closed() == []
    return response


# -- TCP ----------------------------------------------------------------------------------

def test_parallel_guesses_are_checked_at_most_limit_times(site: Site) -> None:
    """25 parallel wrong passwords from one address: MAX_AUTH_FAILURES are checked, the rest refused unchecked."""
    before = site.status()
    clients = [From("127.0.0.2", site.port) for _ in range(25)]
    for client in clients:  # all sent before any answer can come back
        client.send(client.id, auth("alice", "guess"))
    with ThreadPoolExecutor(25) as pool:
        answers = list(pool.map(answer, clients))
    assert answers.count(FAILED) == LIMIT and answers.count(BLOCKED) == 25 - LIMIT
    own = From("127.0.0.2", site.port)  # the attacker's own account cannot reset the count
    own.send(own.id, auth("bob", PASSWORDS["bob"]))
    assert answer(own) == BLOCKED
    elsewhere = From("127.0.0.12", site.port)  # alice's username is over the limit too, from any address
    assert elsewhere.control(auth("alice", PASSWORDS["alice"]))["response"] == BLOCKED
    after = site.status()
    assert after["auth_failures"] - before["auth_failures"] == LIMIT
    assert after["auth_refused"] - before["auth_refused"] == 25 - LIMIT + 2
    assert after["auth_blocked"] >= 2  # the address and the username
    metrics = site.metrics()
    assert f"coremq_auth_failures_total {float(after['auth_failures'])}" in metrics
    assert "coremq_auth_blocked " in metrics


def test_own_login_does_not_reset_the_count(site: Site) -> None:
    """A success of the attacker's own account between guesses takes back its own attempt only."""
    guesses = []
    for _ in range(LIMIT + 3):
        guess = From("127.0.0.3", site.port)
        guess.send(guess.id, auth("root", "guess"))
        guesses.append(answer(guess))
        own = From("127.0.0.3", site.port)
        own.send(own.id, auth("bob", PASSWORDS["bob"]))
        own_answer = answer(own)
        assert own_answer == ("OK: Authenticated" if len(guesses) < LIMIT else BLOCKED)
    assert guesses == [FAILED] * LIMIT + [BLOCKED] * 3


def test_relogin_as_a_weaker_user_ends_the_subscriptions_it_may_not_hold(site: Site) -> None:
    """A TCP re-login re-checks existing subscriptions: those the new user may not hold end with an ERROR."""
    client = From("127.0.0.5", site.port)  # alice's token: her username is blocked by the tests above
    assert client.control({"coremq_auth": {"token": site.world.alice_token}})["response"] == "OK: Authenticated"
    assert client.control({"coremq_subscribe": ["secret", "news.eu"]})["response"] == "OK: Subscribe successful"
    client.send(client.id, auth("bob", PASSWORDS["bob"]))
    frames = [client.read()[1], client.read()[1]]
    assert frames[0] == {"response": "ERROR: permission denied: subscribe on queue 'secret' (subscription ended)", "code": "permission_denied"}
    assert frames[1]["response"] == "OK: Authenticated" and frames[1]["user"] == "bob"
    writer = From("127.0.0.5", site.port)
    assert writer.control({"coremq_auth": {"token": site.world.alice_token}})["response"] == "OK: Authenticated"
    writer.send("secret", {"n": 1})
    assert writer.read()[1]["response"] == "OK: Message sent"  # delivered, if at all, before what follows
    bob = From("127.0.0.5", site.port)
    assert bob.control(auth("bob", PASSWORDS["bob"]))["response"] == "OK: Authenticated"
    bob.send("news.eu", {"n": 2})
    assert bob.read()[1]["response"] == "OK: Message sent"
    queue, message = client.read()
    assert (queue, message["n"]) == ("news.eu", 2)  # the subscription bob may hold goes on; "secret" ended


# -- WebSocket ----------------------------------------------------------------------------

async def _ws_auth(site: Site, token: str, source: str) -> dict:
    """Open a WebSocket from ``source``, send an ``auth`` request with ``token``; its answer."""
    async with ws_connect(f"ws://127.0.0.1:{site.web_port}/ws/coremq/", origin=f"http://127.0.0.1:{site.web_port}",
                          local_addr=(source, 0), open_timeout=30) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        await ws.send(json.dumps({"action": "auth", "token": token, "ref": 1}))
        return json.loads(await asyncio.wait_for(ws.recv(), 30))


async def _ws_query_token(site: Site, token: str, source: str) -> tuple[list[dict], int | None]:
    """Open a WebSocket with ``?token=`` from ``source``; the frames it got and its close code."""
    frames = []
    async with ws_connect(f"ws://127.0.0.1:{site.web_port}/ws/coremq/?token={token}",
                          origin=f"http://127.0.0.1:{site.web_port}", local_addr=(source, 0), open_timeout=30) as ws:
        try:
            async for text in ws:
                frames.append(json.loads(text))
        except ConnectionClosed:
            pass  # closed with a code of its own (docs/websocket.md)
    return frames, ws.close_code


def test_websocket_auth_goes_through_the_same_throttle(site: Site) -> None:
    """WebSocket auth requests are counted with TCP logins: parallel guesses are checked LIMIT times, then refused."""
    before = site.status()
    wrong = "cmq_" + "x" * 43

    async def guesses() -> list[dict]:
        return await asyncio.gather(*(_ws_auth(site, wrong, "127.0.0.4") for _ in range(10)))

    answers = asyncio.run(guesses())
    errors = [frame.get("error") for frame in answers]
    assert all(frame["type"] == "error" and frame["ref"] == 1 for frame in answers)
    assert errors.count("authentication failed") == LIMIT
    assert errors.count("too many failed authentications") == 10 - LIMIT
    assert site.status()["auth_failures"] - before["auth_failures"] == LIMIT  # the broker's own counters
    tcp = From("127.0.0.4", site.port)  # the same address over TCP is blocked too
    tcp.send(tcp.id, {"coremq_auth": {"token": site.world.alice_token}})
    assert answer(tcp) == BLOCKED
    frames, code = asyncio.run(_ws_query_token(site, site.world.alice_token, "127.0.0.4"))
    assert [frame.get("error") for frame in frames] == ["too many failed authentications"]
    assert code == CLOSE_TRY_AGAIN_LATER  # the token was not checked: coremq.js tries again later
    assert asyncio.run(_ws_auth(site, site.world.alice_token, "127.0.0.14"))["type"] == "authenticated"


# -- the Origin check ---------------------------------------------------------------------

def handshake(site: Site, origin: str | None, *, host: str | None = None, extra: str = "") -> int:
    """The HTTP status of a WebSocket handshake to the web side with these headers (101: accepted)."""
    host = host or f"127.0.0.1:{site.web_port}"
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /ws/coremq/ HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               + (f"Origin: {origin}\r\n" if origin is not None else "") + extra + "\r\n")
    with socket.create_connection(("127.0.0.1", site.web_port), timeout=30) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ", 2)[1])


def test_origin_must_match_scheme_host_and_port(site: Site) -> None:
    """Only the site's own origin (scheme, host and port) or CSRF_TRUSTED_ORIGINS may open the WebSocket."""
    web = site.web_port
    assert handshake(site, f"http://127.0.0.1:{web}") == 101
    assert handshake(site, f"http://127.0.0.1:{web + 1}") == 403          # another port
    assert handshake(site, f"https://127.0.0.1:{web}") == 403             # another scheme
    assert handshake(site, "http://127.0.0.1") == 403                     # port 80
    assert handshake(site, f"http://localhost:{web}") == 403              # another host, though in ALLOWED_HOSTS
    assert handshake(site, None) == 403
    assert handshake(site, "null") == 403
    assert handshake(site, f"http://evil.example:{web}", host=f"evil.example:{web}") == 403  # Host not allowed
    assert handshake(site, f"http://localhost:{web}", host=f"localhost:{web}") == 101


def test_trusted_origins_and_a_tls_proxy(site: Site) -> None:
    """CSRF_TRUSTED_ORIGINS count with their port; behind a TLS proxy (SECURE_PROXY_SSL_HEADER) the origin is https."""
    web = site.web_port
    assert handshake(site, TRUSTED) == 101
    assert handshake(site, "https://app.example.test") == 403             # port 443, not 8443
    assert handshake(site, "http://app.example.test:8443") == 403
    proxied = "X-Forwarded-Proto: https\r\n"
    assert handshake(site, f"https://127.0.0.1:{web}", extra=proxied) == 101
    assert handshake(site, f"http://127.0.0.1:{web}", extra=proxied) == 403
