"""The project's ASGI application, served by daphne inside ``manage.py run_coremq``.

One ``ProtocolTypeRouter``: HTTP goes to Django (with static files served by
Django's ``ASGIStaticFilesHandler``, so no extra server is needed); WebSocket
goes to the CoreMQ WebSocket bridge (``coremq_broker.transports.websocket``).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coremq_project.settings")

# Set Django up before importing anything that may touch models.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from coremq_broker.transports.websocket.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # /ws/coremq/: browsers as CoreMQ clients, behind the origin check and the session user.
        "websocket": websocket_application(),
    }
)
