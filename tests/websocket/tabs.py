"""A real WebSocket client (the ``websockets`` package) of a server's ``/ws/coremq/``, and tokens in its database.

The close code a :class:`Tab` reports is the one on the wire, as a browser
would see it in its ``close`` event: 1006 when no close frame came.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from webservers import ROOT

__all__ = ["Tab", "issue_token", "revoke_token", "staff_user"]

#: What a browser sees when the connection ends without a close frame.
ABNORMAL = 1006


class Tab:
    """One WebSocket of ``ws://127.0.0.1:port/path`` with an allowed Origin, speaking the JSON frames."""

    def __init__(self, port: int, path: str = "/ws/coremq/", *, timeout: float = 30.0,
                 source: str | None = None) -> None:
        """``source``: the local address to connect from (another loopback address is another client)."""
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(
            f"ws://127.0.0.1:{port}{path}", origin=f"http://127.0.0.1:{port}",  # type: ignore[arg-type]
            open_timeout=timeout, close_timeout=2, **({"source_address": (source, 0)} if source else {})))
        self.frames: list[dict[str, Any]] = []
        self.code: int | None = None
        self.reason = ""

    def receive(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next JSON frame; ConnectionClosed (with ``code`` set) when the server closed."""
        try:
            frame = json.loads(self.ws.recv(timeout=timeout))
        except ConnectionClosed as exc:
            self.code = exc.rcvd.code if exc.rcvd is not None else ABNORMAL
            self.reason = exc.rcvd.reason if exc.rcvd is not None else ""
            raise
        self.frames.append(frame)
        return frame

    def receive_type(self, kind: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            frame = self.receive(max(0.1, deadline - time.monotonic()))
            if frame["type"] == kind:
                return frame

    def request(self, frame: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send ``frame`` (with a ``ref``) and return its answer; frames in between are kept in ``frames``."""
        self.ws.send(json.dumps(frame))
        deadline = time.monotonic() + timeout
        while True:
            answer = self.receive(max(0.1, deadline - time.monotonic()))
            if answer.get("ref") == frame.get("ref") and answer["type"] != "message":
                return answer

    def closed(self, timeout: float = 30.0) -> int:
        """Read until the server ends the connection; return the close code received (1006: none)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.receive(max(0.1, deadline - time.monotonic()))
            except ConnectionClosed:
                assert self.code is not None
                return self.code
            except TimeoutError:
                raise AssertionError(f"still open after {timeout}s; frames: {self.frames}") from None

    def errors(self) -> list[str]:
        return [frame["error"] for frame in self.frames if frame["type"] == "error"]

    def close(self) -> None:
        self._stack.close()


def _shell(database: Path, code: str) -> str:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings", "COREMQ_DATABASE": str(database)}
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().splitlines()[-1]


def issue_token(database: Path, username: str, *, staff: bool = False) -> tuple[str, int]:
    """A new API token for ``username`` (made, staff or not, if missing): the token and its row's id."""
    line = _shell(database, (
        "from django.contrib.auth.models import User; from coremq_broker.models import ApiToken; "
        f"user, _ = User.objects.get_or_create(username={username!r}); user.is_staff = {staff!r}; user.save(); "
        "row, secret = ApiToken.objects.issue(user, 'test'); print(secret, row.pk)"))
    secret, pk = line.split()
    return secret, int(pk)


def staff_user(database: Path, username: str, password: str) -> None:
    """A staff user who logs in to the admin (and so to the status page) with ``password``."""
    _shell(database, "from django.contrib.auth.models import User; "
                     f"User.objects.filter(username={username!r}).delete(); "
                     f"User.objects.create_user({username!r}, password={password!r}, is_staff=True); print('ok')")


def revoke_token(database: Path, token_id: int) -> None:
    """Revoke a token as the admin does (its ``revoked`` time set); servers see it at their next poll."""
    _shell(database, "from django.utils import timezone; from coremq_broker.models import ApiToken; "
                     f"ApiToken.objects.filter(pk={token_id}).update(revoked=timezone.now()); print('ok')")
