"""coremq_project/settings.py reads its secrets from the environment: run_coremq started with them set."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


def get_status(web_port: int, token: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{web_port}/coremq/status.json",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_status_token_from_the_environment(run_coremq, free_port, monkeypatch: pytest.MonkeyPatch) -> None:
    """COREMQ_STATUS_TOKEN opens /coremq/status.json to that bearer token (and to no other)."""
    monkeypatch.setenv("COREMQ_STATUS_TOKEN", "status-secret-from-env")
    web_port = free_port()
    server = run_coremq("--port", "0", "--web-port", str(web_port))
    server.wait_for("CoreMQ web app on")
    status, body = get_status(web_port, "status-secret-from-env")
    assert status == 200 and "connections" in json.dumps(body)
    status, body = get_status(web_port, "another-token")
    assert status == 401 and "STATUS_TOKEN" in body["error"]
