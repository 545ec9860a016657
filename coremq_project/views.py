"""The project's pages: the live demo (a chat room and a counter) and a view that publishes to the broker."""

from __future__ import annotations

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from coremq_broker import conf, publish
from coremq_client.errors import CoreMQError

COUNTER_QUEUE = "counter"
CHAT_QUEUE = "chat"
_COUNTER_KEY = "coremq:demo:counter"


def home(request: HttpRequest) -> HttpResponse:
    """The live demo: a chat room over the WebSocket, and a counter that :func:`counter_increment` publishes to."""
    config = conf.get_config()
    return render(request, "coremq/home.html",
                  {"config": config, "counter_queue": COUNTER_QUEUE, "chat_queue": CHAT_QUEUE})


@require_POST
def counter_increment(request: HttpRequest) -> JsonResponse:
    """Publish ``{"action": "increment", "by": n, "value": total}`` to the ``counter`` queue; answer with the reply.

    ``by`` comes from the form (default 1); ``total`` is the running sum kept in
    Django's cache. 503 when the broker cannot be reached.
    """
    try:
        by = int(request.POST.get("by", 1))
    except ValueError:
        return JsonResponse({"error": "'by' must be an integer"}, status=400)
    try:
        cache.add(_COUNTER_KEY, 0, timeout=None)
        reply = publish(COUNTER_QUEUE, {"action": "increment", "by": by, "value": cache.incr(_COUNTER_KEY, by)})
    except (CoreMQError, OSError) as exc:
        return JsonResponse({"error": f"broker unavailable: {exc}"}, status=503)
    return JsonResponse({"queue": COUNTER_QUEUE, "reply": reply})
