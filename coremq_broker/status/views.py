"""The live status page in the admin, its JSON, ``/metrics``, and the page's admin actions.

- ``status_page`` (``/admin/coremq/status/``): staff only, through the admin's
  own login; the page is a shell that ``status.js`` fills from ``status.json``
  every half second.
- ``status_json`` (``/coremq/status.json``) and ``metrics`` (``/metrics``): a
  staff session, or ``Authorization: Bearer <COREMQ['STATUS_TOKEN']>``.
- ``status_action`` (``/admin/coremq/status/<action>/``, POST with CSRF):
  ``disconnect``, ``purge`` and ``publish``, for a staff session only.

The data views are async: under ``run_coremq`` they run on the broker's own
loop and read its registry directly; they touch the database only through
``request.auser()``, which Django runs off the loop.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from .. import conf
from . import metrics as metrics_module
from .cluster import add_cluster
from .layer import add_layer_drops
from .store import add_store_figures
from .source import ActionFailed, SourceUnavailable, get_source

__all__ = ["status_page", "status_json", "metrics", "status_action", "POLL_INTERVAL_MS"]

#: How often the page asks for a new snapshot.
POLL_INTERVAL_MS = 500
#: The message the publish form offers.
DEFAULT_TEST_MESSAGE = {"text": "test message from the CoreMQ status page"}


def status_page(request: HttpRequest) -> HttpResponse:
    """The page; wrapped in ``admin.site.admin_view`` (staff only, others go to the login page)."""
    context = {
        **admin.site.each_context(request),
        "title": "CoreMQ live status",
        "is_nav_sidebar_enabled": False,  # the tables want the whole width
        "poll_interval_ms": POLL_INTERVAL_MS,
        "default_test_message": json.dumps(DEFAULT_TEST_MESSAGE),
    }
    return render(request, "coremq/status.html", context)


@never_cache
@require_GET
async def status_json(request: HttpRequest) -> HttpResponse:
    """The broker's live snapshot: ``broker``, ``connections``, ``queues``; 503 when it cannot be asked."""
    denied = await _deny(request)
    if denied is not None:
        return denied
    try:
        snapshot = await get_source().snapshot()
    except SourceUnavailable as exc:
        return JsonResponse({"error": str(exc)}, status=503)
    return JsonResponse(add_cluster(add_store_figures(add_layer_drops(snapshot))))


@never_cache
@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    """The snapshot in Prometheus' text format; ``coremq_up 0`` alone when the broker cannot be asked."""
    denied = await _deny(request)
    if denied is not None:
        return denied
    try:
        snapshot: dict[str, Any] | None = add_cluster(
            add_store_figures(add_layer_drops(await get_source().snapshot())))
    except SourceUnavailable:
        snapshot = None
    return HttpResponse(metrics_module.render(snapshot), content_type=metrics_module.CONTENT_TYPE)


@never_cache
@require_POST
async def status_action(request: HttpRequest, action: str) -> JsonResponse:
    """Carry out one of the page's actions for a staff user; answer ``{"ok", "message"|"error", "reply"}``."""
    user = await request.auser()
    if not (user.is_active and user.is_staff):
        return JsonResponse({"ok": False, "error": "staff only"}, status=403)
    by = f"{user.get_username()} (status page)"
    source = get_source()
    try:
        if action == "disconnect":
            connection = request.POST.get("connection", "")
            reply = await source.admin("disconnect", by=by, connection=connection)
            done = f"Disconnected {connection}."
        elif action == "purge":
            queue = request.POST.get("queue", "")
            reply = await source.admin("purge", by=by, queue=queue)
            done = f"Purged {reply.get('purged', 0)} message(s) from {queue}."
        elif action == "publish":
            queue = request.POST.get("queue", "")
            try:
                message = json.loads(request.POST.get("message") or json.dumps(DEFAULT_TEST_MESSAGE))
            except ValueError as exc:
                return JsonResponse({"ok": False, "error": f"the message is not JSON: {exc}"}, status=400)
            reply = await source.publish(queue, message, by=by)
            done = f"Published message {reply.get('id')} to {queue}."
        else:
            return JsonResponse({"ok": False, "error": f"unknown action {action!r}"}, status=404)
    except ActionFailed as exc:
        return JsonResponse({"ok": False, "error": str(exc)}, status=400)
    except SourceUnavailable as exc:
        return JsonResponse({"ok": False, "error": str(exc)}, status=503)
    reply = {key: value for key, value in reply.items() if key != "request"}
    return JsonResponse({"ok": True, "message": done, "reply": reply})


async def _deny(request: HttpRequest) -> HttpResponse | None:
    """None if the request may read the status (a staff session or the token), else the refusal."""
    if _bearer_token_matches(request):
        return None
    user = await request.auser()
    if user.is_active and user.is_staff:
        return None
    if user.is_authenticated:
        return JsonResponse({"error": "staff only"}, status=403)
    response = JsonResponse({"error": "log in as staff, or send Authorization: Bearer <COREMQ['STATUS_TOKEN']>"},
                            status=401)
    response["WWW-Authenticate"] = 'Bearer realm="CoreMQ status"'
    return response


def _bearer_token_matches(request: HttpRequest) -> bool:
    token = conf.get_status_token()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(given.strip().encode(), token.encode())
