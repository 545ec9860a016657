"""``python -m coremq_client`` run as a real process against a real broker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from brokers import BrokerThread
from coremq_broker.core.access import Principal, RulePolicy
from coremq_broker.core.config import BrokerConfig
from coremq_client import MessageQueue

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
ENV.pop("DJANGO_SETTINGS_MODULE", None)
ENV.pop("COREMQ_PASSWORD", None)


def cli(broker, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coremq_client", "--host", broker.host, "--port", str(broker.port), *args],
        capture_output=True, text=True, timeout=30, env={**ENV, **(env or {})}, cwd=ROOT,
    )


@pytest.fixture
def start_sub():
    """Start ``sub`` and return once it has said that it is subscribed; killed at the end if still running.

    SIGINT is reset to its default in the child: a pytest started in the
    background (``&`` from a script) ignores it, and children inherit that.
    """
    started: list[subprocess.Popen[str]] = []

    def start(broker, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "coremq_client", "--host", broker.host, "--port", str(broker.port), "sub", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        started.append(process)
        assert process.stderr is not None
        notice = process.stderr.readline()
        assert notice.startswith("# subscribed to"), notice
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_pub_prints_the_reply(broker):
    """`pub QUEUE JSON` publishes and prints the broker's reply as JSON."""
    result = cli(broker, "pub", "news", '{"a": 1}')
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["response"] == "OK: Message sent" and reply["id"] == 1


def test_sub_prints_json_lines_until_count(broker, start_sub):
    """`sub Q1 Q2 --count 3` prints one JSON line per message, from every queue, then exits 0."""
    process = start_sub(broker, "a", "b", "--count", "3")
    with MessageQueue(broker.host, broker.port) as pub:
        pub.publish("a", {"n": 1})
        pub.publish("b", "two")
        pub.publish("a", [3])
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["queue"] for line in lines] == ["a", "b", "a"]
    assert lines[0]["message"]["n"] == 1 and lines[1]["message"] == "two" and lines[2]["message"] == [3]


def test_sub_stops_cleanly_on_ctrl_c(broker, start_sub):
    """SIGINT ends `sub` with status 0 and no traceback."""
    process = start_sub(broker, "q")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in err


def test_history_prints_stored_messages(broker):
    """`history QUEUE` prints {queue: [messages]}; --since limits it to newer ids."""
    with MessageQueue(broker.host, broker.port) as pub:
        pub.publish("h", "one")
        pub.publish("h", "two")
    result = cli(broker, "history", "h", "other")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"h": ["one", "two"], "other": []}
    assert json.loads(cli(broker, "history", "h", "--since", "1").stdout) == {"h": ["two"]}


def test_status_prints_the_server(broker):
    """`status` prints the broker's status object."""
    result = cli(broker, "status")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["response"] == "OK: Status" and status["connections"] >= 1


def test_unreachable_broker_exits_1(broker):
    """A broker that cannot be reached gives exit status 1 and a one-line error, no traceback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "coremq_client", "--port", str(port), "--timeout", "0.5", "status"],
        capture_output=True, text=True, timeout=30, env=ENV, cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_bad_json_is_a_usage_error(broker):
    """`pub` with an argument that is not JSON exits 2 without connecting."""
    result = cli(broker, "pub", "q", "{not json")
    assert result.returncode == 2 and "not JSON" in result.stderr


def test_connection_options_after_the_command(broker):
    """--host, --port and --timeout work after the command too; one given after it wins over one before."""
    command = [sys.executable, "-m", "coremq_client"]
    where = ["--host", broker.host, "--port", str(broker.port), "--timeout", "5"]
    run = dict(capture_output=True, text=True, timeout=30, env=ENV, cwd=ROOT)
    result = subprocess.run([*command, "pub", *where, "after", '"x"'], **run)
    assert result.returncode == 0 and json.loads(result.stdout)["id"] == 1, result.stderr
    result = subprocess.run([*command, "--port", "1", "history", "after", "--port", str(broker.port)], **run)
    assert result.returncode == 0 and json.loads(result.stdout) == {"after": ["x"]}, result.stderr
    result = subprocess.run([*command, "--host", broker.host, "status", "--port", str(broker.port)], **run)
    assert json.loads(result.stdout)["response"] == "OK: Status", result.stderr


@pytest.mark.parametrize("args", [
    ("pub", "", "{}"),
    ("pub", "two words", "{}"),
    ("pub", "q", "42"),
    ("pub", "q", "null"),
    ("history", "fine", ""),
    ("sub", "q w"),
])
def test_local_validation_errors_exit_2(broker, args):
    """What the client refuses before sending (bad queue names, a number as message) exits 2, not 1."""
    result = cli(broker, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    with MessageQueue(broker.host, broker.port) as check:
        assert check.status()["connections"] == 1  # nothing but this check ever connected


@pytest.mark.parametrize(("text", "kind"), [("42", "a number"), ("1.5", "a number"), ("true", "a boolean"),
                                            ("null", "null")])
def test_an_unpublishable_message_is_named_in_json_terms(broker, text, kind):
    """The command line speaks JSON, so its refusal does too (the broker's words, not Python's types)."""
    result = cli(broker, "pub", "q", text)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: a message must be a JSON object, array or string, not {kind}"


def test_a_message_over_the_brokers_frame_limit_exits_2(broker_config):
    """A message larger than the broker's frame limit is refused by the client: exit 2, nothing published."""
    running = BrokerThread(replace(broker_config, max_frame_size=1024))
    try:
        result = cli(running, "pub", "big", json.dumps("x" * 4096))
        assert result.returncode == 2 and "frame limit" in result.stderr, result.stderr
        assert json.loads(cli(running, "history", "big").stdout) == {"big": []}
    finally:
        running.stop()


def test_importing_the_client_never_imports_django():
    """`import coremq_client` (both clients and the CLI) loads no Django module."""
    code = ("import sys, coremq_client, coremq_client.cli; "
            "bad = [m for m in sys.modules if m == 'django' or m.startswith('django.')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr


# -- logging in and TLS --------------------------------------------------------

async def authenticate(credentials: dict) -> Principal | None:
    if credentials.get("token") == "tok-alice":
        return Principal("alice", 1, is_staff=True)
    if credentials.get("username") == "bob" and credentials.get("password") == "builder":
        return Principal("bob", 2, is_staff=True)
    return None


@pytest.fixture
def secured():
    """A broker where only logged-in users (here, staff) may do anything."""
    running = BrokerThread(BrokerConfig(port=0, shutdown_timeout=2.0),
                           access=RulePolicy((), default="authenticated"), authenticator=authenticate)
    yield running
    running.stop()


def test_token_and_password_log_in(secured):
    """--token, and --username with the password from $COREMQ_PASSWORD or --password, log in before the command."""
    assert cli(secured, "pub", "q", "{}").returncode == 1  # anonymous: refused
    assert json.loads(cli(secured, "--token", "tok-alice", "pub", "q", "{}").stdout)["id"] == 1
    result = cli(secured, "--username", "bob", "pub", "q", "{}", env={"COREMQ_PASSWORD": "builder"})
    assert json.loads(result.stdout)["id"] == 2, result.stderr
    result = cli(secured, "--username", "bob", "--password", "builder", "status")
    assert json.loads(result.stdout)["response"] == "OK: Status", result.stderr


def test_refused_credentials_exit_1(secured):
    """Wrong credentials give exit status 1 and "error: authentication failed"."""
    result = cli(secured, "--username", "bob", "--password", "nope", "status")
    assert result.returncode == 1 and result.stderr.strip() == "error: authentication failed"


@pytest.mark.parametrize("args", [
    ("--username", "bob"),
    ("--password", "builder"),
    ("--token", "t", "--username", "bob", "--password", "builder"),
])
def test_incomplete_credentials_are_a_usage_error(broker, args):
    """A username without a password, a password without a username, or a token with a username exit 2."""
    result = cli(broker, *args, "status")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_tls_with_cafile(broker_config, tmp_path):
    """--cafile (or --tls with it) connects over TLS trusting that certificate; plain TCP to it fails."""
    from selfsigned import tls_contexts

    server_tls, _ = tls_contexts(tmp_path)
    running = BrokerThread(broker_config, ssl=server_tls)
    try:
        cafile = str(tmp_path / "cert.pem")
        result = cli(running, "--tls", "--cafile", cafile, "pub", "secure", '"hush"')
        assert json.loads(result.stdout)["id"] == 1, result.stderr
        result = cli(running, "--cafile", cafile, "history", "secure")
        assert json.loads(result.stdout) == {"secure": ["hush"]}
        assert cli(running, "--tls", "--timeout", "1", "status").returncode == 1  # not a trusted authority
    finally:
        running.stop()
