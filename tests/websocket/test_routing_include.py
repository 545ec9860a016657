"""A project's own WebSocket routes beside /ws/coremq/, as the README's "Add CoreMQ to your Django project" says."""

from __future__ import annotations

import pytest
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator
from django.urls import path

from coremq_broker.transports.websocket.routing import websocket_application, websocket_urlpatterns

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

ORIGIN = (b"origin", b"http://127.0.0.1:8000")


class Echo(AsyncWebsocketConsumer):
    """The project's own consumer: sends back what it receives."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=f"echo: {text_data}")


@pytest.mark.django_db(transaction=True)  # Channels' consumers close stale database connections on each frame
async def test_own_routes_and_coremq_in_one_application(in_process_broker) -> None:
    """websocket_application(websocket_urlpatterns + yours) serves both: CoreMQ's welcome and the project's echo."""
    application = websocket_application(websocket_urlpatterns + [path("ws/echo/", Echo.as_asgi())])
    echo = WebsocketCommunicator(application, "/ws/echo/", headers=[ORIGIN])
    assert (await echo.connect(timeout=10))[0]
    await echo.send_to(text_data="hi")
    assert await echo.receive_from(timeout=10) == "echo: hi"
    await echo.disconnect()

    browser = WebsocketCommunicator(application, "/ws/coremq/", headers=[ORIGIN])
    assert (await browser.connect(timeout=10))[0]
    welcome = await browser.receive_json_from(timeout=10)
    assert welcome["type"] == "welcome" and "/" in welcome["connection_id"]
    await browser.disconnect()

    refused = WebsocketCommunicator(application, "/ws/echo/", headers=[(b"origin", b"http://elsewhere.example")])
    assert not (await refused.connect(timeout=10))[0]  # the same origin check guards the project's routes
