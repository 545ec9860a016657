"""The project's ASGI application, with the chat room's WebSocket route instead of the project's bridge."""

from channels.routing import ProtocolTypeRouter, URLRouter

from chatapp.routing import websocket_urlpatterns
from coremq_project.asgi import application as project

application = ProtocolTypeRouter({"http": project, "websocket": URLRouter(websocket_urlpatterns)})
