"""Where the CoreMQ WebSocket endpoint lives, and the stack that guards it.

``coremq_project/asgi.py`` mounts :func:`websocket_application` as the
``"websocket"`` entry of its ``ProtocolTypeRouter``: origins are checked
against ``ALLOWED_HOSTS`` and the Django session user is put in the scope.
"""

from __future__ import annotations

from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from .consumer import CoreMQConsumer

__all__ = ["websocket_urlpatterns", "websocket_application"]

websocket_urlpatterns = [
    path("ws/coremq/", CoreMQConsumer.as_asgi(), name="coremq-websocket"),
]


def websocket_application(urlpatterns: list[Any] | None = None) -> Any:
    """The ASGI app for WebSocket connections: origin check, session user, then the URL router."""
    return AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(urlpatterns or websocket_urlpatterns)))
