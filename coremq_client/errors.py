"""The exceptions of CoreMQ, shared by the broker and both clients.

The tree::

    CoreMQError
    ├── ProtocolError (ValueError)          the bytes on the wire break the protocol
    │   ├── FrameHeaderError                "+<N> " is malformed; the stream cannot be resynced
    │   ├── FrameTooLarge                   N is over the frame limit (carries size and limit)
    │   ├── FrameBodyError                  the payload has no "<queue> " prefix or bad UTF-8
    │   └── MessageError                    the JSON is invalid or of the wrong type
    ├── InvalidQueueName (ValueError)       empty, whitespace, too long
    ├── ServerError                         the broker answered "ERROR: ..." (carries .reason, .request)
    │   ├── PermissionDenied (PermissionError)
    │   ├── SlowConsumer                    the broker dropped messages this client read too slowly (.dropped)
    │   └── AuthenticationFailed            the credentials were refused; not retried by reconnect
    ├── ConnectionClosed (ConnectionError)  the connection is gone (BYE, EOF or a socket error)
    └── Timeout (TimeoutError)              no answer within the time allowed

``ProtocolError`` subclasses describe what a *peer* sent; ``LocalUsageError``
(a ``TypeError``) is raised when the caller misuses an API, for instance by
passing a value that cannot be published.
"""

from __future__ import annotations

from .error_codes import error_code

__all__ = [
    "CoreMQError",
    "ProtocolError",
    "FrameHeaderError",
    "FrameTooLarge",
    "FrameBodyError",
    "MessageError",
    "InvalidQueueName",
    "ServerError",
    "PermissionDenied",
    "SlowConsumer",
    "AuthenticationFailed",
    "ConnectionClosed",
    "Timeout",
    "LocalUsageError",
]


class CoreMQError(Exception):
    """Root of every CoreMQ exception."""


class ProtocolError(CoreMQError, ValueError):
    """The peer sent bytes that break the CoreMQ wire protocol."""

    #: When true the byte stream can no longer be split into frames and the
    #: connection must be closed; when false only one frame was bad.
    fatal: bool = False


class FrameHeaderError(ProtocolError):
    """The ``+<N> `` header of a frame is malformed."""

    fatal = True


class FrameTooLarge(ProtocolError):
    """A frame announced a length over the frame size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame too large: {size} bytes, limit is {limit}")
        self.size = size
        self.limit = limit


class FrameBodyError(ProtocolError):
    """A frame's payload is not ``<queue> <json>`` in UTF-8."""


class MessageError(ProtocolError):
    """A frame's JSON is invalid, or not of a type allowed where it was sent."""


class InvalidQueueName(CoreMQError, ValueError):
    """A queue name is empty, holds whitespace or is longer than allowed."""


class ServerError(CoreMQError):
    """The broker answered a request with ``ERROR: <reason>``.

    ``request`` is the number of the request it answers on its connection
    (1-based, see the protocol's ``"request": n``), or None for an error that
    answers no particular request (``ERROR: slow consumer``). ``code`` is the
    error's stable machine-readable code (``docs/protocol.md``, *Errors*).
    """

    def __init__(self, reason: str, request: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request = request
        self.code = error_code(reason)


class PermissionDenied(ServerError, PermissionError):
    """The broker refused an action on a queue."""


class SlowConsumer(ServerError):
    """``ERROR: slow consumer: messages dropped``: the broker dropped messages this connection read too slowly.

    ``dropped`` maps each queue to the ``(first, last)`` ``coremq_id`` dropped
    (None where the broker could not tell). A client that resumes fetches them
    from history and reports as a :class:`~coremq_client.protocol.Gap` only
    what history no longer holds; this error tells that the application is
    slower than its publishers.
    """

    def __init__(self, reason: str, dropped: dict[str, tuple[int | None, int | None]]) -> None:
        super().__init__(reason)
        self.dropped = dropped


class AuthenticationFailed(ServerError):
    """The broker refused the client's credentials (``ERROR: authentication failed``).

    A reconnecting client does not try the same credentials again: it stops
    until the caller gives new ones.
    """


class ConnectionClosed(CoreMQError, ConnectionError):
    """The connection to the broker is closed."""


class Timeout(CoreMQError, TimeoutError):
    """The broker did not answer within the time allowed."""


class LocalUsageError(CoreMQError, TypeError):
    """The caller used the API wrongly (for example an unpublishable value)."""
