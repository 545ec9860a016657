"""coremq_broker.start(): a broker in its own process, with a handle that reports its port and stops it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coremq_broker import start
from wire import RawClient

ROOT = Path(__file__).resolve().parents[2]


def test_start_returns_working_handle() -> None:
    """start(port=0) listens on a real port; stop() says BYE to clients and the process exits 0."""
    handle = start(port=0, log_level="WARNING")
    try:
        assert handle.host == "127.0.0.1" and handle.port > 0 and handle.is_alive()
        client = RawClient(handle.host, handle.port)
        assert client.welcome["response"].startswith("OK:")
        assert handle.stop(timeout=5) == 0
        assert client.read_until_closed()[-1] == (client.id, {"response": "BYE"})
        assert not handle.is_alive() and handle.join() == 0
    finally:
        handle.stop()


def test_context_manager_stops() -> None:
    """Leaving the with block stops the broker."""
    with start(port=0, log_level="WARNING") as handle:
        assert handle.is_alive()
    assert not handle.is_alive() and handle.exitcode == 0


def test_start_uses_settings_and_options(settings) -> None:
    """Defaults come from settings.COREMQ when Django is configured; keyword options override them."""
    settings.COREMQ = {"SERVER_NAME": "from-settings", "HISTORY_LENGTH": 2}
    with start(port=0, log_level="WARNING", max_frame_size=4096) as handle:
        welcome = RawClient(handle.host, handle.port).welcome
    assert welcome["server"] == "from-settings"
    assert welcome["max_frame_size"] == 4096


def test_port_in_use_raises() -> None:
    """start() raises OSError when the port is taken instead of returning a dead handle."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            start(port=taken.getsockname()[1], log_level="CRITICAL")


def test_unknown_option_raises() -> None:
    """An option that is not a BrokerConfig field is a TypeError, raised before any process starts."""
    with pytest.raises(TypeError, match="histroy_length"):
        start(port=0, histroy_length=3)


def test_works_without_django_settings() -> None:
    """`from coremq_broker import start` imports no Django and start() works with no settings module."""
    script = textwrap.dedent("""
        import sys
        import coremq_broker
        assert "django" not in sys.modules, "importing coremq_broker imported Django"
        from coremq_broker import start
        from coremq_client.sync_client import MessageQueue
        if __name__ == "__main__":
            with start(port=0, log_level="WARNING") as broker:
                with MessageQueue(broker.host, broker.port) as client:
                    print(client.welcome_message)
            print("exit", broker.exitcode)
    """)
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["OK: Welcome from CoreMQ!", "exit 0"]
