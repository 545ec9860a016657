"""The read-only state both clients show, written once for both.

:class:`ClientState` is a mixin of :class:`~coremq_client.MessageQueue` and
:class:`~coremq_client.AsyncMessageQueue`; it reads the attributes that each
client's ``__init__`` sets and never changes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import CoreMQError
from .protocol import Gap

from ._common import JSONObject

if TYPE_CHECKING:
    from ._common import ErrorReporter, GapReporter, SessionState
    from .protocol import Welcome
    from .resume import Resumer

__all__ = ["ClientState"]


class ClientState:
    """Properties common to both clients."""

    _conn: Any
    _ended: Any
    _deliveries: Any  # queue.Queue or asyncio.Queue
    _welcome: "Welcome | None"
    _state: "SessionState"
    _resumer: "Resumer"
    _user: str | None
    _reporter: "ErrorReporter"
    _gap_reporter: "GapReporter"

    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        conn = self._conn
        return conn is not None and conn.alive

    @property
    def closed(self) -> bool:
        """True once the client has ended for good (close(), or a loss without reconnect)."""
        return self._ended is not None

    @property
    def connection_id(self) -> str | None:
        """The id of the current (or last) connection, from its welcome."""
        return self._welcome.connection_id if self._welcome else None

    @property
    def welcome(self) -> JSONObject | None:
        """The whole welcome object of the current (or last) connection."""
        return self._welcome.message if self._welcome else None

    @property
    def welcome_message(self) -> str | None:
        """The welcome's ``response`` text, e.g. ``"OK: Welcome from CoreMQ!"``."""
        return self._welcome.message.get("response") if self._welcome else None

    @property
    def queues(self) -> tuple[str, ...]:
        """The queues this client subscribes to on every connect."""
        return self._state.queues

    @property
    def options(self) -> dict[str, Any]:
        """The options this client sets on every connect."""
        return self._state.options

    @property
    def resume(self) -> bool:
        """True when the client fetches what it missed after a reconnect."""
        return self._resumer.enabled

    @property
    def user(self) -> str | None:
        """The user this connection is logged in as (from ``OK: Authenticated``), or None."""
        return self._user

    @property
    def last_ids(self) -> dict[str, int]:
        """The ``coremq_id`` of the last message delivered per queue (a copy)."""
        return self._resumer.last_ids

    @property
    def pending(self) -> int:
        """How many received messages wait for ``receive()`` (at most about ``max_pending``)."""
        return self._deliveries.qsize()

    @property
    def errors(self) -> list[CoreMQError]:
        """The most recent errors that no caller waited for, oldest first."""
        return list(self._reporter.recent)

    @property
    def gaps(self) -> list[Gap]:
        """The most recent gaps reported (messages that will never be delivered), oldest first."""
        return list(self._gap_reporter.recent)
