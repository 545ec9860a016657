"""The Channels consumer behind ``/ws/coremq/``: one browser, spoken to in JSON text frames.

The consumer only parses, checks and answers; the process's
:class:`~coremq_broker.transports.websocket.bridge.Bridge` holds the one link to the
broker and fans messages out. Deliveries never pass through a channel layer.
Every bad frame is answered with an error frame; nothing a browser sends
closes its connection. The protocol is in ``docs/websocket.md``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.consumer import get_handler_name

from coremq_client.errors import CoreMQError, InvalidQueueName, MessageError

from ... import conf
from ...core.access import Principal
from ...core.limits import address_of
from ...auth.authenticator import TooManyFailures, throttled_authenticate, user_principal
from .bridge import CLOSE_CREDENTIALS, CLOSE_TRY_AGAIN_LATER, Bridge, BridgeError, Browser
from .daphne import direct_writer
from .links import get_bridge
from .protocol import (
    Auth,
    BadRequest,
    History,
    Publish,
    Request,
    Subscribe,
    Unsubscribe,
    error_frame,
    parse_queue_list,
    parse_request,
)

__all__ = ["CoreMQConsumer", "RAW_SEND"]

#: Where :class:`~coremq_broker.transports.websocket.routing.RawSendMiddleware` keeps the server's ``send``.
RAW_SEND = "coremq.send"

logger = logging.getLogger("coremq.websocket")


class CoreMQConsumer(AsyncWebsocketConsumer):
    """A browser taking part in CoreMQ. ``?queues=a,b`` subscribes on connect.

    The browser is ``scope["user"]`` (its Django session, from
    ``AuthMiddlewareStack``), or the user of the API token given as
    ``?token=`` or in an ``auth`` request; the bridge checks each of its
    requests with the broker's access policy (``docs/security.md``).
    """

    #: Never a channel layer: messages come from the bridge, not from Redis.
    channel_layer_alias = "coremq-no-channel-layer"

    bridge: Bridge | None = None
    browser: Browser | None = None

    async def dispatch(self, message: dict) -> None:
        # Channels closes stale database connections (a thread hop) before every
        # frame; this consumer touches the database only to log in (on connect, or
        # an auth request), which tidies its own connections, so frames go straight
        # to their handler. (AuthMiddleware's user lookup cleans up after itself.)
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        await self.accept()
        config = conf.get_config()
        self.max_size: int = conf.get_web_setting("WEBSOCKET_MAX_MESSAGE_SIZE")
        self.max_queue_name_length = config.max_queue_name_length
        try:
            principal, refusal, code = await self.principal(), "authentication failed", CLOSE_CREDENTIALS
        except TooManyFailures as exc:  # its address is over MAX_AUTH_FAILURES: the token was not checked
            principal, refusal, code = None, str(exc), CLOSE_TRY_AGAIN_LATER  # it may log in once unblocked
        if principal is None:
            logger.warning("WebSocket from %s refused: %s", self.scope.get("client"), refusal)
            await self.send(text_data=_dumps(error_frame(refusal)))
            await self.close(code)
            return
        # The server's own send (see routing.RawSendMiddleware), and under daphne a direct writer.
        send = self.scope.get(RAW_SEND, self.base_send)
        client = self.scope.get("client")
        address = address_of(f"{client[0]}:{client[1]}") if client else ""
        try:
            bridge = await get_bridge()
            crowded = bridge.admit(address, principal, config.max_connections_per_address)
            if crowded is not None:
                logger.warning("WebSocket from %s refused: %s", address, crowded)
                await self.send(text_data=_dumps(error_frame(crowded)))
                await self.close(CLOSE_TRY_AGAIN_LATER)
                return
            self.bridge = bridge
            self.browser = bridge.attach(send, user=self.scope.get("user"), principal=principal,
                                         writer=direct_writer(send, config.max_write_buffer), address=address)
        except (CoreMQError, OSError) as exc:
            logger.warning("WebSocket from %s refused: no link to the broker (%s)", self.scope.get("client"), exc)
            await self.send(text_data=_dumps(error_frame(f"the broker is unavailable: {exc}")))
            await self.close(CLOSE_TRY_AGAIN_LATER)
            return
        queues = _query_queues(self.scope.get("query_string", b""))
        if queues:
            await self.handle(_parse_query_queues(queues, self.max_queue_name_length))

    async def principal(self) -> Principal | None:
        """Who the browser is: the user of ``?token=`` (None if it does not log in), else the session's user.

        A token goes through the login throttle, as an ``auth`` request does
        (:class:`TooManyFailures`, unchecked, when the address is over the limit).
        """
        tokens = parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("token")
        if tokens:
            return await throttled_authenticate({"token": tokens[0]}, self.client_host())
        return await user_principal(self.scope.get("user"))

    def client_host(self) -> str:
        """The browser's address as the server saw it (what the login throttle counts)."""
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    async def disconnect(self, code: int) -> None:
        if self.bridge is not None and self.browser is not None:
            self.bridge.detach(self.browser)
            self.browser = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.bridge is None or self.browser is None:
            return  # refused on connect; the close is under way
        data = text_data if text_data is not None else bytes_data
        await self.handle(parse_request(data, codec=self.bridge.codec, max_size=self.max_size,
                                        max_queue_name_length=self.max_queue_name_length))

    async def handle(self, request: Request | BadRequest) -> None:
        """Carry out one request and answer it; every failure becomes an error frame."""
        bridge, browser = self.bridge, self.browser
        assert bridge is not None and browser is not None
        if isinstance(request, BadRequest):  # with the action when it was understood
            extra = {"action": request.action} if request.action is not None else {}
            bridge.send(browser, error_frame(request.error, request.ref, **extra))
            return
        action = type(request).__name__.lower()
        try:
            if not isinstance(request, Auth):
                self.check_access(request)
            answer = await self.carry_out(bridge, browser, request)
        except (BridgeError, CoreMQError) as exc:
            bridge.send(browser, error_frame(str(exc), request.ref, action=action))
            return
        except Exception:
            logger.exception("WebSocket %s request failed", action)
            bridge.send(browser, error_frame("internal error", request.ref, action=action))
            return
        if browser.open:
            bridge.send(browser, {**answer, "ref": request.ref})

    async def carry_out(self, bridge: Bridge, browser: Browser, request: Request) -> dict[str, Any]:
        if isinstance(request, Subscribe):
            sequence = await bridge.subscribe(browser, request.queues)
            return {"type": "subscribed", "queues": list(request.queues), "sequence": sequence}
        if isinstance(request, Unsubscribe):
            await bridge.unsubscribe(browser, request.queues)
            return {"type": "unsubscribed", "queues": list(request.queues)}
        if isinstance(request, Publish):
            reply = await bridge.publish(browser, request.queue, request.message)
            return {"type": "published", "queue": request.queue, "id": reply.get("id")}
        if isinstance(request, Auth):
            principal = await throttled_authenticate({"token": request.token}, self.client_host())
            if principal is None:
                raise BridgeError("authentication failed")
            browser.principal = principal
            bridge.enforce(browser)  # another user may not keep every subscription
            return {"type": "authenticated", "user": principal.username}
        assert isinstance(request, History)
        return {"type": "history", **await bridge.history(browser, request.since, request.limit)}

    def check_access(self, request: Request) -> None:
        """Raise :class:`BridgeError` if the browser's user may not make ``request`` (the policy's check)."""
        action = {Subscribe: "subscribe", Publish: "publish", History: "history"}.get(type(request))
        if action is not None:
            assert self.bridge is not None and self.browser is not None
            queues = [request.queue] if isinstance(request, Publish) else list(request.queues)  # type: ignore[union-attr]
            self.bridge.check(self.browser, action, queues)


def _query_queues(query_string: bytes) -> str:
    values = parse_qs(query_string.decode("latin-1")).get("queues", [])
    return ",".join(values)


def _parse_query_queues(value: str, max_length: int) -> Subscribe | BadRequest:
    names = [name for name in value.split(",") if name]
    if not names:
        return BadRequest("?queues= names no queue", action="subscribe")
    try:
        return Subscribe(parse_queue_list(names, max_length))
    except (InvalidQueueName, MessageError) as exc:
        return BadRequest(f"?queues=: {exc}", action="subscribe")


def _dumps(frame: dict[str, Any]) -> str:
    return conf.get_config().codec.dumps(frame).decode()
