"""manage.py run_coremq as a real process: broker and web app up, graceful stop on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import socket
import urllib.request

import pytest

from wire import RawClient

STOP_SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def http_get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.read().decode()


def assert_stops_gracefully(server, client: RawClient, signum: int) -> None:
    server.process.send_signal(signum)
    frames = client.read_until_closed()
    assert frames and frames[-1] == (client.id, {"response": "BYE"})
    assert server.process.wait(timeout=5) == 0


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_broker_only(run_coremq, free_port, signum: int) -> None:
    """--no-web: the TCP port sends a welcome; on the signal clients get BYE and the process exits 0."""
    port = free_port()
    server = run_coremq("--no-web", "--port", str(port))
    assert f"127.0.0.1:{port}" in server.wait_for("CoreMQ broker listening on")
    client = RawClient("127.0.0.1", port)
    assert client.welcome["response"].startswith("OK:")
    assert_stops_gracefully(server, client, signum)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_broker_and_web(run_coremq, free_port, signum: int) -> None:
    """With web: one process serves the broker and HTTP (/ and /admin/login/); a signal stops both cleanly."""
    port, web_port = free_port(), free_port()
    server = run_coremq("--port", str(port), "--web-port", str(web_port))
    server.wait_for("CoreMQ broker listening on")
    assert f"http://127.0.0.1:{web_port}/" in server.wait_for("CoreMQ web app on")
    client = RawClient("127.0.0.1", port)
    assert client.welcome["response"].startswith("OK:")
    status, body = http_get(web_port, "/")
    assert status == 200 and "CoreMQ" in body
    status, body = http_get(web_port, "/admin/login/")
    assert status == 200 and "csrfmiddlewaretoken" in body
    assert_stops_gracefully(server, client, signum)


def test_port_zero_reports_real_ports(run_coremq) -> None:
    """--port 0 --web-port 0 binds free ports and prints the real ones."""
    server = run_coremq("--port", "0", "--web-port", "0")
    port = int(server.wait_for("CoreMQ broker listening on").split()[-2].rsplit(":", 1)[1])
    web_url = server.wait_for("CoreMQ web app on").split()[-1]
    assert RawClient("127.0.0.1", port).welcome["response"].startswith("OK:")
    assert http_get(int(web_url.rstrip("/").rsplit(":", 1)[1]), "/")[0] == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=5) == 0


def test_port_in_use_is_an_error(run_coremq) -> None:
    """A broker port that is taken makes the command fail with a message, not hang."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = run_coremq("--no-web", "--port", str(taken.getsockname()[1]))
        assert server.process.wait(timeout=30) != 0
    assert "cannot serve" in "".join(server.output)


def test_web_port_in_use_is_an_error(run_coremq) -> None:
    """A web port that is taken makes the command fail (and close the broker) instead of serving half."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = run_coremq("--port", "0", "--web-port", str(taken.getsockname()[1]))
        assert server.process.wait(timeout=30) != 0
    output = "".join(server.output)
    assert "cannot serve" in output and "Traceback" not in output


def test_views_publish_to_the_broker_of_the_command(run_coremq) -> None:
    """Under `run_coremq --port 0`, a view's publish() reaches the broker the command bound, not the settings' port."""
    import http.cookiejar
    import urllib.request

    server = run_coremq("--port", "0", "--web-port", "0")
    port = int(server.wait_for("CoreMQ broker listening on").split()[-2].rsplit(":", 1)[1])
    web = server.wait_for("CoreMQ web app on").split()[-1]
    subscriber = RawClient("127.0.0.1", port)
    assert subscriber.control({"coremq_subscribe": ["counter"]})["response"] == "OK: Subscribe successful"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(web, timeout=10).read()
    token = next(cookie.value for cookie in jar if cookie.name == "csrftoken")
    request = urllib.request.Request(web + "counter/increment/", data=b"by=2", method="POST",
                                     headers={"X-CSRFToken": token, "Referer": web})
    assert opener.open(request, timeout=10).status == 200
    queue, message = subscriber.read()
    assert queue == "counter" and message["by"] == 2
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=5) == 0
