"""Which pages may open the CoreMQ WebSocket: this site's own origin, and ``CSRF_TRUSTED_ORIGINS``.

A browser sends the page's origin (scheme, host and port) with every
WebSocket handshake, and sends the site's cookies whatever page opens it; so a
page elsewhere must not get a socket that acts as the logged-in user. The
check is Django's CSRF origin check, on the handshake:

- the ``Origin`` must be the request's own origin: ``https`` when the socket
  is ``wss`` (the scope's ``scheme``; daphne gives none, so a connection to
  daphne's own TLS endpoint is told by its transport, see :func:`.daphne.is_tls`)
  or ``SECURE_PROXY_SSL_HEADER`` says so behind a proxy, else
  ``http``, then the ``Host`` header (``X-Forwarded-Host`` with
  ``USE_X_FORWARDED_HOST``), which must be in ``ALLOWED_HOSTS``; scheme, host
  and port all count (``http://example.com:8000`` is not
  ``http://example.com``, nor ``https://example.com``); default ports may be
  left out;
- or one of ``CSRF_TRUSTED_ORIGINS`` (``https://app.example.com``, or
  ``https://*.example.com`` for its subdomains), scheme and port included.

Anything else, and a handshake without an ``Origin``, is refused (HTTP 403)
and logged. A scope without a ``Host`` header (an ASGI test communicator; no
server makes one, as the WebSocket handshake requires ``Host``) falls back to
the origin's host being in ``ALLOWED_HOSTS``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

from .daphne import is_tls

__all__ = ["SameOriginValidator", "origin_allowed"]

logger = logging.getLogger("coremq.websocket")

_DEFAULT_PORTS = {"http": 80, "https": 443}


class SameOriginValidator:
    """ASGI middleware: a WebSocket handshake goes on only from an allowed origin (see the module)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SameOriginValidator guards WebSocket connections only")
        if "scheme" not in scope and is_tls(send):
            scope = {**scope, "scheme": "wss"}  # daphne over TLS: the ASGI scheme it leaves out
        if origin_allowed(scope):
            return await self.application(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        logger.warning("WebSocket from %s refused: origin %r is not allowed for host %r", scope.get("client"),
                       headers.get(b"origin", b"").decode("latin-1") or None,
                       headers.get(b"host", b"").decode("latin-1") or None)
        return await WebsocketDenier()(scope, receive, send)


def origin_allowed(scope: dict) -> bool:
    """Whether the handshake in ``scope`` comes from this site's origin or a trusted one."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope.get("headers") or ():
        headers.setdefault(bytes(name).lower(), bytes(value))
    raw = headers.get(b"origin")
    if raw is None:
        return False
    origin = _normalise(raw.decode("latin-1"))
    if origin is None:
        return False
    host = _host(headers)
    if host is None:
        return validate_host(origin[1], _allowed_hosts())
    domain, port = split_domain_port(host)
    if domain and validate_host(domain, _allowed_hosts()):
        own = _normalise(f"{'https' if _is_secure(scope, headers) else 'http'}://{host}")
        if own is not None and own == origin:
            return True
    return _trusted(raw.decode("latin-1"), origin)


def _normalise(value: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an origin, the default port filled in; None if it is not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def _host(headers: dict[bytes, bytes]) -> str | None:
    forwarded = headers.get(b"x-forwarded-host") if getattr(settings, "USE_X_FORWARDED_HOST", False) else None
    value = forwarded or headers.get(b"host")
    return value.decode("latin-1").split(",")[0].strip() if value else None


def _allowed_hosts() -> list[str]:
    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]  # as Django's HttpRequest.get_host()
    return allowed


def _is_secure(scope: dict, headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") in ("wss", "https"):
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, expected = proxy
        name = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        value = headers.get(name)
        return value is not None and value.decode("latin-1").split(",")[0].strip() == expected
    return False


def _trusted(raw: str, origin: tuple[str, str, int]) -> bool:
    for entry in getattr(settings, "CSRF_TRUSTED_ORIGINS", ()):
        if "*" in entry:
            scheme, _, netloc = entry.partition("://")
            if scheme.lower() == origin[0] and is_same_domain(urlsplit(raw).netloc.lower(),
                                                              netloc.replace("*", "", 1).lower()):
                return True
        elif _normalise(entry) == origin:
            return True
    return False
