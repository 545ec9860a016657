"""The project's pages: a home page and an example view that publishes to the broker."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from coremq_broker import conf, publish
from coremq_client.errors import CoreMQError

COUNTER_QUEUE = "counter"


def home(request: HttpRequest) -> HttpResponse:
    """What CoreMQ is, where the broker listens, and a button that publishes."""
    config = conf.get_config()
    return render(request, "coremq/home.html", {"config": config, "counter_queue": COUNTER_QUEUE})


@require_POST
def counter_increment(request: HttpRequest) -> JsonResponse:
    """Publish ``{"action": "increment", "by": n}`` to the ``counter`` queue; answer with the broker's reply.

    ``by`` comes from the form (default 1). 503 when the broker cannot be reached.
    """
    try:
        by = int(request.POST.get("by", 1))
    except ValueError:
        return JsonResponse({"error": "'by' must be an integer"}, status=400)
    try:
        reply = publish(COUNTER_QUEUE, {"action": "increment", "by": by})
    except (CoreMQError, OSError) as exc:
        return JsonResponse({"error": f"broker unavailable: {exc}"}, status=503)
    return JsonResponse({"queue": COUNTER_QUEUE, "reply": reply})
