"""Where the CoreMQ WebSocket endpoint lives, and the stack that guards it.

``coremq_project/asgi.py`` mounts :func:`websocket_application` as the
``"websocket"`` entry of its ``ProtocolTypeRouter``: the page's origin must
be the site's own, scheme, host and port (:mod:`.origin`), and the Django
session user is put in the scope.
The bridge keeps the server's unwrapped ``send`` for its deliveries.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from django.urls import path

from .consumer import RAW_SEND, CoreMQConsumer
from .origin import SameOriginValidator

__all__ = ["RawSendMiddleware", "websocket_urlpatterns", "websocket_application"]

class RawSendMiddleware:
    """Keeps the server's own ``send`` in ``scope["coremq.send"]`` for the bridge.

    Channels' session middleware wraps ``send`` to save sessions on HTTP
    responses; on a WebSocket that wrapper only costs time, once per delivered
    message per browser. Deliveries use the unwrapped ``send`` (and, under
    daphne, the socket itself: see :mod:`.daphne`).
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        return await self.application({**scope, RAW_SEND: send}, receive, send)


websocket_urlpatterns = [
    path("ws/coremq/", CoreMQConsumer.as_asgi(), name="coremq-websocket"),
]


def websocket_application(urlpatterns: list[Any] | None = None) -> Any:
    """The ASGI app for WebSocket connections: origin check, session user, then the URL router."""
    return SameOriginValidator(RawSendMiddleware(AuthMiddlewareStack(
        URLRouter(urlpatterns or websocket_urlpatterns))))
