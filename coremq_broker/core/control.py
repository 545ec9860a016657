"""Control requests: what a client asks of the broker on its own id queue.

:class:`Control` is composed with the :class:`~coremq_broker.core.broker.Broker`
(``broker.control``); the pipeline hands it every frame to a connection's own
id queue that carries a ``coremq_*`` control key. Every handler validates its
value, asks the access policy (``broker.check``), and answers once; a refusal
raises :class:`RequestError`, which the pipeline turns into an ``ERROR:`` reply.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any, Callable

from coremq_client import protocol as P
from coremq_client.codec import encode_frame, shown, validate_queue_name
from coremq_client.errors import CoreMQError

from .access import denial, peer_address, subscription_limit
from .limits import history_reply, recount
from .registry import Connection
from .version import VERSION
from .wire import stamped

if TYPE_CHECKING:
    from .access import AuthAttempt
    from .broker import Broker

__all__ = ["Control", "RequestError"]

logger = logging.getLogger("coremq.broker")


class RequestError(CoreMQError):
    """A request was refused; the text becomes the ``ERROR:`` reply."""


class Control:
    """The handlers of the ``coremq_*`` control keys, and the status and admin requests, of one broker."""

    def __init__(self, broker: "Broker") -> None:
        self.broker = broker
        self.config = broker.config
        self.registry = broker.registry
        self.bounds = broker.bounds
        #: Control keys served by a part composed in by the runner (the store): key -> handler.
        self.extensions: dict[str, Callable[[Connection, Any, dict], Any]] = {}

    def register(self, key: str, handler: Callable[[Connection, Any, dict], Any]) -> None:
        """Serve the control key ``key`` with ``handler(connection, value, message)``.

        The handler checks access (``broker.check``) and returns the reply (a
        dict), or an awaitable of it (the connection's later frames wait);
        it raises :class:`RequestError` (also from the awaitable) to refuse.
        """
        if not key.startswith("coremq_") or key in P.CONTROL_KEYS or key in P.STAMP_KEYS or key in (P.STRING, P.ARRAY):
            raise ValueError(f"{key!r} cannot be an extension's control key")
        self.extensions[key] = handler

    def _reply(self, connection: Connection, reply: dict, request: int | None = None) -> None:
        """Answer ``request`` (by default the connection's latest) with ``reply``."""
        self.broker.answer(connection, reply, connection.requests if request is None else request)

    def _check(self, connection: Connection, action: str, name: str | None) -> None:
        self.broker.check(connection, action, name)

    def handle(self, connection: Connection, message: dict) -> None:
        """Carry out the control request ``message`` (exactly one control key); raise :class:`RequestError`."""
        extensions = self.extensions
        keys = [key for key in message if key in P.CONTROL_KEYS or key in extensions]
        unknown = [key for key in message if key.startswith("coremq_") and key not in P.CONTROL_KEYS
                   and key not in extensions and key not in P.STAMP_KEYS and key not in (P.STRING, P.ARRAY)]
        if unknown:
            raise RequestError(f"unknown control key {shown(unknown[0])}")
        if len(keys) != 1:
            raise RequestError(f"a control request holds exactly one control key, got {shown(sorted(keys))}")
        key = keys[0]
        value = message[key]
        if key == P.SUBSCRIBE:
            self._subscribe(connection, value)
        elif key == P.UNSUBSCRIBE:
            for name in self._queue_list(value, key):
                if name != connection.id:
                    self.registry.unsubscribe(connection, name)
            self._reply(connection, {"response": P.OK_UNSUBSCRIBE})
        elif key == P.OPTIONS:
            self._options(connection, value)
        elif key == P.GETHISTORY:
            self._history(connection, value, message.get("limit"))
        elif key == P.STATUS:
            self._status(connection, value)
        elif key == P.AUTH:
            self._auth(connection, value)
        elif key in extensions:
            self._extension(connection, extensions[key], value, message)
        else:
            self._admin(connection, value)

    def _extension(self, connection: Connection, handler: Callable[[Connection, Any, dict], Any], value: Any,
                   message: dict) -> None:
        reply = handler(connection, value, message)
        if not inspect.isawaitable(reply):
            self._reply(connection, reply)
            return
        answered: list[dict] = []

        async def wait() -> None:
            answered.append(await reply)

        self._answer_after(connection, wait(), lambda request: self._reply(connection, answered[0], request),
                           connection.requests)

    def _queue_list(self, value: Any, key: str) -> list[str]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
            raise RequestError(f"{key} takes a list of queue names")
        return [validate_queue_name(name, self.config.max_queue_name_length) for name in value]

    def _check_private(self, connection: Connection, action: str, name: str) -> None:
        """Refuse another connection's id and sub-addresses, and those of a connection that is closed."""
        owner = self.registry.owner_of(name)
        if (owner is not None and owner != connection.id) or (owner is None and self.registry.is_closed_address(name)):
            self.registry.denials += 1
            raise RequestError(denial(action, name, "another connection's private queue"))

    def _subscribe(self, connection: Connection, value: Any) -> None:
        names = self._queue_list(value, P.SUBSCRIBE)
        for name in names:
            self._check_private(connection, "subscribe", name)
            self._check(connection, "subscribe", name)
        new = [name for name in names if name not in connection.subscriptions]
        limit = self.config.max_subscriptions
        held = sum(1 for name in connection.subscriptions if self.registry.owner_of(name) != connection.id)
        refusal = subscription_limit(held, len(new), limit)
        if refusal is not None:
            raise RequestError(refusal)
        self.bounds.admit_queue(self.registry, len({name for name in new if name not in self.registry.queues}))
        for name in new:
            self.registry.subscribe(connection, name)
        # An engine with other nodes answers once it listens: what they publish after the answer arrives.
        ready = getattr(self.broker.engine, "subscribed", None)
        waiting = ready(new) if ready is not None and new else None
        if waiting is not None:
            self._answer_after(connection, waiting, self._reply, connection, {"response": P.OK_SUBSCRIBE},
                               connection.requests)
            return
        self._reply(connection, {"response": P.OK_SUBSCRIBE})

    def _options(self, connection: Connection, value: Any) -> None:
        if not isinstance(value, dict):
            raise RequestError(f"{P.OPTIONS} takes an object")
        for name, option in value.items():
            if name in (P.OPTION_ECHO, P.OPTION_REPLY) and option is not None and not isinstance(option, bool):
                raise RequestError(f"option {shown(name)} must be true, false or null")
        for name, option in value.items():
            if option is None:
                connection.options.pop(name, None)
            else:
                connection.options[name] = option
        connection.echo = bool(connection.options.get(P.OPTION_ECHO, False))
        connection.replies = bool(connection.options.get(P.OPTION_REPLY, True))
        self._reply(connection, {"response": P.OK_OPTIONS, "options": connection.options})

    def _history(self, connection: Connection, value: Any, limit: Any = None) -> None:
        """History of each queue, oldest first, since an id if asked, at most ``limit`` per queue.

        ``sequence`` gives each queue's first id in history and the last id
        stored (a durable message counts once it is on disk); ``more`` names the
        queues whose answer ``limit`` or the frame limit cut short: the client
        asks again from the last id it got (coremq_broker/core/limits.py).
        """
        if isinstance(value, dict):
            since = value
            names = self._queue_list(list(value), P.GETHISTORY)
            for name in names:
                if since[name] is not None and (not isinstance(since[name], int) or isinstance(since[name], bool)):
                    raise RequestError(f"history since must be an integer or null, got {shown(since[name])}")
        else:
            names = self._queue_list(value, P.GETHISTORY)
            since = {}
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise RequestError(f"history limit must be a positive integer, got {shown(limit)}")
        for name in names:
            self._check_private(connection, "history", name)
            self._check(connection, "history", name)
        # An engine whose history lives elsewhere (several nodes) reads it first; what follows waits.
        load = getattr(self.broker.engine, "load_history", None)
        loading = load(names) if load is not None else None
        if loading is not None:
            self._answer_after(connection, loading, self._send_history, connection, names, since, limit,
                               connection.requests)
            return
        self._send_history(connection, names, since, limit, connection.requests)

    def _answer_after(self, connection: Connection, waiting: Any, answer: Any, *args: Any) -> None:
        """Call ``answer(*args)`` once ``waiting`` is done; the connection's later frames wait (as after a login).

        ``args`` end with the request's number, which an error answers instead.
        """
        connection.hold()
        connection.authenticating = True
        asyncio.get_running_loop().create_task(self._answered_after(connection, waiting, answer, args))

    async def _answered_after(self, connection: Connection, waiting: Any, answer: Any, args: tuple) -> None:
        try:
            await waiting
            if not connection.closing:
                answer(*args)
        except CoreMQError as exc:
            self.broker.refuse(connection, str(exc), args[-1])
        finally:
            self._resume(connection)

    def _resume(self, connection: Connection) -> None:
        """Read ``connection`` again, carrying out first the frames that waited for an answer."""
        connection.authenticating = False
        connection.release()
        held, connection.held_frames = connection.held_frames, []
        if held and not connection.closing:
            self.broker.handle_frames(connection, held)

    def _send_history(self, connection: Connection, names: list[str], since: dict, limit: int | None,
                      request: int) -> None:
        asked = [(name, self.registry.queues.get(name), since.get(name)) for name in names]
        # No reply is larger than a frame: what does not fit is named in "more", for the next page.
        body = history_reply(asked, limit=limit, room=self.config.max_frame_size - connection.id_length,
                             request=request, dumps=self.broker.wire.dumps, splice=stamped,
                             bounds=self.bounds, history=self.broker.engine.history)
        connection.send(encode_frame(connection.id, body))

    def _auth(self, connection: Connection, value: Any) -> None:
        """Authenticate off the loop; the connection's requests wait for the answer.

        The attempt is counted against the peer's address and the username
        before the authenticator runs (:class:`~coremq_broker.core.access.FailureTracker`),
        so parallel guesses cannot all be checked; over the limit the
        connection is refused and closed unchecked.
        """
        if not isinstance(value, dict) or not (isinstance(value.get("token"), str) or (
                isinstance(value.get("username"), str) and isinstance(value.get("password"), str))):
            raise RequestError(f"{P.AUTH} takes {{\"token\": ...}} or {{\"username\": ..., \"password\": ...}}")
        if self.broker.authenticator is None:
            raise RequestError("authentication is not configured on this broker")
        address = peer_address(connection.peer.rpartition(":")[0] or connection.peer)
        username = None if isinstance(value.get("token"), str) else value["username"]
        attempt = self.broker.auth_failures.begin(address, username)
        if attempt is None:
            logger.warning("connection %s: %s is blocked after repeated failed authentications%s",
                           connection.id, address, f" (or user {username[:64]!r} is)" if username else "")
            connection.close("too many failed authentications")
            return
        connection.hold()
        connection.authenticating = True
        asyncio.get_running_loop().create_task(
            self._authenticate(connection, dict(value), connection.requests, attempt))

    async def _authenticate(self, connection: Connection, credentials: dict, request: int,
                            attempt: "AuthAttempt") -> None:
        succeeded = False
        try:
            try:
                principal = await self.broker.authenticator(credentials)  # type: ignore[misc]
            except Exception:
                logger.exception("authenticator failed")
                principal = None
            if principal is None or self.broker.access.is_revoked(principal):
                self.broker.auth_failures.settle(attempt, False)
                logger.warning("connection %s (%s): authentication failed for %r", connection.id, connection.peer,
                               str(credentials.get("username") or "a token")[:64])
                await asyncio.sleep(self.broker.auth_failures.delay(attempt.address, attempt.username))  # slows guessing
                self._reply(connection, {"response": "ERROR: authentication failed", "code": "auth_failed"}, request)
                return
            succeeded = True
            limit = self.config.max_connections_per_user
            same_user = sum(1 for other in self.registry.connections.values()
                            if other is not connection and other.principal.username == principal.username)
            if same_user >= limit:
                self._reply(connection, {"response": f"ERROR: too many connections for user "
                                                     f"{principal.username!r}: limit is {limit}",
                                         "code": "too_many_connections"}, request)
                return
            if connection.closing:
                return
            connection.principal = principal
            logger.info("connection %s authenticated as %r", connection.id, principal.username)
            self.broker.enforce(connection)  # the new user may not hold every subscription
            self._reply(connection, {"response": P.OK_AUTH, "user": principal.username,
                                     "staff": principal.is_staff}, request)
        finally:
            if succeeded:
                self.broker.auth_failures.settle(attempt, True)
            self._resume(connection)

    def _status(self, connection: Connection, value: Any) -> None:
        self._check(connection, "status", None)
        detail = value if isinstance(value, dict) else {}
        self._reply(connection, {"response": P.OK_STATUS, **self.status(
            connections=bool(detail.get("connections")), queues=bool(detail.get("queues")),
            series=bool(detail.get("series")))})

    def _admin(self, connection: Connection, value: Any) -> None:
        self._check(connection, "admin", None)
        self._reply(connection, self.admin(value, by=connection.id))

    def admin(self, value: Any, *, by: str) -> dict[str, Any]:
        """Carry out an administrator's request and return the reply; raise :class:`RequestError`.

        ``value`` is the ``coremq_admin`` object; ``by`` names who asked (for
        the log). The access check is the caller's: :meth:`_admin` asks the
        policy, the in-process status page has checked for a staff user.
        """
        if not isinstance(value, dict) or not isinstance(value.get("action"), str):
            raise RequestError(f"{P.ADMIN} takes an object with an action")
        action = value["action"]
        if action == "disconnect":
            target = self.registry.connections.get(value.get("connection"))  # type: ignore[arg-type]
            if target is None:
                raise RequestError(f"no connection {shown(value.get('connection'))}")
            logger.info("connection %s disconnected by %s", target.id, by)
            target.close("disconnected by an administrator")
            return {"response": "OK: Disconnected"}
        if action == "purge":
            queue = self.registry.queues.get(value.get("queue"))  # type: ignore[arg-type]
            purged = len(queue.history) if queue is not None else 0
            if queue is not None:
                self.broker.engine.purge(queue)
                recount(self.bounds, queue)
            return {"response": "OK: Purged", "purged": purged}
        raise RequestError(f"unknown admin action {shown(action)}")

    def status(self, *, connections: bool = False, queues: bool = False, series: bool = False) -> dict[str, Any]:
        """The server's description, as a status request returns it.

        With ``connections`` or ``queues`` it lists each connection and each
        public queue as well (the status page's tables); with ``series`` the
        messages in and out per second over the last minute, oldest first
        (the status page's chart).
        """
        status = {
            "server": self.config.server_name,
            "address": self.broker.address,
            "version": VERSION,
            "role": "master",
            **self.registry.describe(),
            **self.broker.auth_failures.describe(),  # failed logins, refused attempts, blocked addresses and users
        }
        # The durable history's writer: "ok", "unavailable" (with its error), or "unused" until a durable
        # queue needs it (HistoryStore.describe).
        described = status["durable"] = self.broker.engine.describe()
        if "others" in described:  # one node of several: which one answered, and the other live ones
            status["node"], status["other_nodes"] = described.get("node"), described["others"]
        if connections:
            status["connection_list"] = [c.describe() for c in self.registry.connections.values()]
        if queues:
            status["queue_list"] = [q.describe() for q in self.registry.public_queues()]
        if series:
            status["rate_in_series"] = self.registry.rate_in.series()
            status["rate_out_series"] = self.registry.rate_out.series()
        return status


