"""Django settings of the CoreMQ project.

Development defaults; override through the environment in production
(``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG=0``, ``DJANGO_ALLOWED_HOSTS``,
``COREMQ_DATABASE``, ``COREMQ_DEFAULT_POLICY``, ``COREMQ_CLIENT_TOKEN``,
``COREMQ_STATUS_TOKEN``, ``COREMQ_TLS_CERT``, ``COREMQ_TLS_KEY``).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-coremq-development-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    # daphne first: it installs Twisted's asyncio reactor before anything imports another one.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "coremq_broker",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "coremq_project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "coremq_project" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "coremq_project.wsgi.application"
ASGI_APPLICATION = "coremq_project.asgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("COREMQ_DATABASE", BASE_DIR / "db.sqlite3"),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Served by daphne itself through ASGIStaticFilesHandler (see asgi.py); no extra dependency.
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "coremq_project" / "static"]  # the demo page's CSS and script

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# CoreMQ. Every key is optional. Each BrokerConfig field (coremq_broker/core/config.py)
# is a key in upper case with its default there: HOST (127.0.0.1), PORT (6747),
# SERVER_NAME, HISTORY_LENGTH (10), MAX_FRAME_SIZE (1 MiB), ... Besides those,
# coremq_broker/conf.py reads WEB_HOST (127.0.0.1), WEB_PORT (8000) and ENCODER /
# DECODER (a class, a callable or a dotted path, for instance
# "django.core.serializers.json.DjangoJSONEncoder"; orjson when unset). The
# system checks (coremq.E001...) validate all of it. Access (docs/security.md):
# DEFAULT_POLICY is "open" for development; in production use "authenticated" or
# "deny" with permission rules in the admin, TLS, and a token for this web
# process's own clients (CLIENT_TOKEN, made in the admin for a staff user).
COREMQ = {
    "SERVER_NAME": "CoreMQ",
    # Durable queues' history (a per-queue setting in the admin, or DURABLE_ALL).
    "DURABLE_PATH": os.environ.get("COREMQ_DURABLE_PATH", str(BASE_DIR / "coremq-history.sqlite3")),
    "DEFAULT_POLICY": os.environ.get("COREMQ_DEFAULT_POLICY", "open"),
    **{key: os.environ[f"COREMQ_{key}"] for key in ("CLIENT_TOKEN", "STATUS_TOKEN", "TLS_CERT", "TLS_KEY")
       if os.environ.get(f"COREMQ_{key}")},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},  # stderr by default
    },
    "loggers": {
        "coremq": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "coremq_broker": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "coremq_client": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "daphne": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
    },
}
