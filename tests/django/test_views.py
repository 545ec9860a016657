"""The project's pages answer: home, admin login, and static files through the ASGI app."""

from __future__ import annotations

import pytest
from asgiref.testing import ApplicationCommunicator


def test_home(client) -> None:
    """/ renders the home page with the broker's address and a publish form."""
    response = client.get("/")
    assert response.status_code == 200
    assert b"CoreMQ" in response.content and b"/counter/increment/" in response.content


def test_admin_login(client) -> None:
    """/admin/login/ renders."""
    assert client.get("/admin/login/").status_code == 200


@pytest.mark.asyncio
async def test_asgi_app_serves_static_files() -> None:
    """The project's ASGI application serves the admin's CSS itself (no separate static server)."""
    from coremq_project.asgi import application

    scope = {"type": "http", "method": "GET", "path": "/static/admin/css/base.css", "headers": [],
             "query_string": b"", "http_version": "1.1", "scheme": "http", "server": ("testserver", 80)}
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    assert start["type"] == "http.response.start" and start["status"] == 200
