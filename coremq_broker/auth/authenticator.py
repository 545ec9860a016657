"""Who a client is: an API token or a username and password, checked against Django's users.

:func:`authenticate` is the coroutine given to ``Broker(authenticator=...)``
and used by the WebSocket consumer for ``?token=``. The ORM and the password
hasher (hundreds of milliseconds, on purpose) run in a worker thread, never on
the event loop, and not in the thread shared by Django's sync views
(``thread_sensitive=False``): a burst of logins must not stall the admin.
Database connections are tidied before and after, as around a request
(Channels' ``database_sync_to_async``).
Failures are not told apart (unknown, wrong, expired, revoked, inactive):
the broker answers each the same way, slowly.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import authenticate as django_authenticate
from django.utils import timezone

from ..access import ANONYMOUS, Principal
from .tokens import TOKEN_PREFIX, hash_matches, token_prefix

__all__ = ["authenticate", "authenticate_now", "user_principal", "principal_for", "token_principal"]

logger = logging.getLogger("coremq.auth")


async def authenticate(credentials: dict[str, Any]) -> Principal | None:
    """``{"token": ...}`` or ``{"username": ..., "password": ...}`` → the Principal, or None if refused."""
    return await database_sync_to_async(authenticate_now, thread_sensitive=False)(credentials)


async def user_principal(user: Any) -> Principal:
    """The Principal of a Django user (a WebSocket's session user); its groups are read off the loop.

    An anonymous user costs no thread hop (``AuthMiddleware`` has resolved it already).
    """
    if not getattr(user, "is_authenticated", False):
        return ANONYMOUS
    return await database_sync_to_async(principal_for, thread_sensitive=False)(user)


def authenticate_now(credentials: dict[str, Any]) -> Principal | None:
    """:func:`authenticate`, blocking."""
    token = credentials.get("token")
    if isinstance(token, str):
        return token_principal(token)
    username, password = credentials.get("username"), credentials.get("password")
    if isinstance(username, str) and isinstance(password, str):
        user = django_authenticate(None, username=username, password=password)
        return principal_for(user) if user is not None else None
    return None


def token_principal(token: str) -> Principal | None:
    """The Principal of a valid token (not revoked, not expired, its user active); notes its use."""
    from ..models import ApiToken

    if not token.startswith(TOKEN_PREFIX):
        return None
    now = timezone.now()
    for candidate in ApiToken.objects.select_related("user").filter(prefix=token_prefix(token)):
        if hash_matches(token, candidate.key_hash):
            if not candidate.is_valid(now) or not candidate.user.is_active:
                logger.info("token %s of %r refused: %s", candidate.prefix, candidate.user.get_username(),
                            candidate.state if not candidate.is_valid(now) else "inactive user")
                return None
            ApiToken.objects.filter(pk=candidate.pk).update(last_used=now)
            return principal_for(candidate.user, token_id=candidate.pk)
    return None


def principal_for(user: Any, token_id: int | None = None) -> Principal:
    """The Principal of a Django user (anonymous users are :data:`~coremq_broker.access.ANONYMOUS`). Blocking."""
    if not getattr(user, "is_authenticated", False):
        return ANONYMOUS
    return Principal(
        username=user.get_username(),
        user_id=user.pk,
        is_staff=bool(user.is_staff),
        groups=frozenset(user.groups.values_list("name", flat=True)),
        token_id=token_id,
    )
