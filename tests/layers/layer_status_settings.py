"""The project's settings with CHANNEL_LAYERS on CoreMQ (no hosts: the broker run_coremq serves), capacity 3,
and the chat room's consumer at /ws/chat/<room>/ (the project's own bridge uses no channel layer)."""

from coremq_project.settings import *  # noqa: F401,F403
from coremq_project.settings import COREMQ

CHANNEL_LAYERS = {"default": {"BACKEND": "coremq_broker.layers.CoreMQChannelLayer", "CONFIG": {"capacity": 3}}}
COREMQ = {**COREMQ, "STATUS_TOKEN": "layer-status-token"}
ASGI_APPLICATION = "layer_status_asgi.application"
