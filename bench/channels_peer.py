"""The comparison for ``bench.websocket``: a plain Channels consumer that fans out with ``group_send``.

Run by the benchmark as ``python -m daphne -p PORT bench.channels_peer:application``:
a minimal Django configuration of its own (no project, no database), with
``CHANNEL_LAYERS`` on ``channels_redis`` at ``127.0.0.1:6379``, or, with
``BENCH_CHANNEL_LAYER=coremq``, on CoreMQ's layer at ``BENCH_COREMQ_URL`` (the
same consumer; only the setting changes). It speaks the
same browser protocol as ``/ws/coremq/`` as far as the benchmark uses it:
``?queues=q`` joins group ``q`` and answers ``subscribed``; a ``publish``
frame is encoded once and handed to ``group_send``, each member sends it on
to its browser, and the publisher gets ``published`` with its ``ref``. This is
how a Channels app is usually written; every delivered message passes
through Redis once per member.
"""

from __future__ import annotations

import json
import os
from urllib.parse import parse_qs

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-channels-peer",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        INSTALLED_APPS=["channels"],
        DATABASES={},
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")],
                    # Room for the benchmark's lag window, so that nothing is dropped for capacity.
                    "capacity": 5000,
                    "prefix": "bench-ws",
                },
            } if os.environ.get("BENCH_CHANNEL_LAYER", "redis") == "redis" else {
                "BACKEND": "coremq_broker.layers.CoreMQChannelLayer",
                "CONFIG": {"hosts": [os.environ.get("BENCH_COREMQ_URL", "coremq://127.0.0.1:6747")],
                           "capacity": 5000, "prefix": "bench-ws"},
            },
        },
        LOGGING_CONFIG=None,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

__all__ = ["FanoutConsumer", "application"]


class FanoutConsumer(AsyncWebsocketConsumer):
    """One browser: joins the groups of ``?queues=``, publishes to a group, forwards the group's messages."""

    async def connect(self) -> None:
        query = parse_qs(self.scope["query_string"].decode())
        self.queues = [name for value in query.get("queues", []) for name in value.split(",") if name]
        await self.accept()
        for name in self.queues:
            await self.channel_layer.group_add(name, self.channel_name)
        if self.queues:
            await self.send(text_data=json.dumps({"type": "subscribed", "queues": self.queues, "ref": None}))

    async def disconnect(self, code: int) -> None:
        for name in getattr(self, "queues", []):
            await self.channel_layer.group_discard(name, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        request = json.loads(text_data or "{}")
        if request.get("action") != "publish":
            await self.send(text_data=json.dumps({"type": "error", "error": "unknown action", "ref": request.get("ref")}))
            return
        queue = request["queue"]
        text = json.dumps({"type": "message", "queue": queue, "message": request["message"]})
        await self.channel_layer.group_send(queue, {"type": "fanout.message", "text": text})
        await self.send(text_data=json.dumps({"type": "published", "queue": queue, "ref": request.get("ref")}))

    async def fanout_message(self, event: dict) -> None:
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter({
    "websocket": AllowedHostsOriginValidator(URLRouter([path("ws/coremq/", FanoutConsumer.as_asgi())])),
})
