"""WSGI entry point; CoreMQ runs under ASGI (``run_coremq``), this serves plain HTTP only."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coremq_project.settings")

application = get_wsgi_application()
