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

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import authenticate as django_authenticate
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils import timezone

from coremq_client.errors import CoreMQError

from .. import conf
from ..core.access import ANONYMOUS, FailureTracker, Principal, peer_address
from ..core.broker import Broker
from .tokens import TOKEN_PREFIX, hash_matches, token_prefix

__all__ = ["authenticate", "authenticate_now", "user_principal", "principal_for", "token_principal",
           "login_throttle", "throttled_authenticate", "TooManyFailures"]

logger = logging.getLogger("coremq.auth")

#: The login throttle of a web process that does not run the broker (see :func:`login_throttle`).
_web_throttle: FailureTracker | None = None


class TooManyFailures(CoreMQError, PermissionError):
    """A login refused unchecked: its address (or username) is over ``MAX_AUTH_FAILURES``."""

    def __init__(self) -> None:
        super().__init__("too many failed authentications")


def login_throttle() -> FailureTracker:
    """The login throttle this process's WebSocket logins go through.

    Under ``run_coremq`` it is the broker's own (``Broker.auth_failures``, on
    the same loop): a browser's failures and a TCP client's count together.
    A web process of its own (a separate daphne) keeps one of its own, with
    the same limit.
    """
    global _web_throttle
    broker = Broker.running()
    if broker is not None:
        return broker.auth_failures
    if _web_throttle is None:
        _web_throttle = FailureTracker(limit=conf.get_config().max_auth_failures)
    return _web_throttle


@receiver(setting_changed)
def _reset_web_throttle(*, setting: str, **kwargs: Any) -> None:
    global _web_throttle
    if setting == conf.SETTING:
        _web_throttle = None  # a new limit applies from the next login


async def throttled_authenticate(credentials: dict[str, Any], host: str) -> Principal | None:
    """:func:`authenticate` through :func:`login_throttle` for a peer at ``host``.

    The attempt counts before the credentials are checked; a failure is
    answered after the delay it earned. Raises :class:`TooManyFailures`,
    unchecked, when the address (or the username) is over the limit.
    """
    throttle = login_throttle()
    address = peer_address(host)
    username = credentials.get("username") if not isinstance(credentials.get("token"), str) else None
    attempt = throttle.begin(address, username if isinstance(username, str) else None)
    if attempt is None:
        logger.warning("%s is blocked after repeated failed authentications", address)
        raise TooManyFailures()
    principal = None
    try:
        principal = await authenticate(credentials)
    finally:
        throttle.settle(attempt, principal is not None)
    if principal is None:
        logger.warning("%s: authentication failed for %r", host, str(username or "a token")[:64])
        await asyncio.sleep(throttle.delay(attempt.address, attempt.username))  # slows guessing down
    return principal


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
    """The Principal of a Django user (anonymous users are :data:`~coremq_broker.core.access.ANONYMOUS`). Blocking."""
    if not getattr(user, "is_authenticated", False):
        return ANONYMOUS
    return Principal(
        username=user.get_username(),
        user_id=user.pk,
        is_staff=bool(user.is_staff),
        groups=frozenset(user.groups.values_list("name", flat=True)),
        token_id=token_id,
    )
