"""Settings of the chat room project: Channels, one app, no database; CHANNEL_LAYERS from CHAT_CHANNEL_LAYERS."""

from __future__ import annotations

import json
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "chat-room-test"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["daphne", "channels", "chatapp"]
ROOT_URLCONF = "chatapp.urls"
ASGI_APPLICATION = "chatapp.asgi.application"
DATABASES: dict = {}
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [], "APP_DIRS": True}]
USE_TZ = True
CHANNEL_LAYERS = json.loads(os.environ.get(
    "CHAT_CHANNEL_LAYERS",
    '{"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://127.0.0.1:6379"]}}}'))
