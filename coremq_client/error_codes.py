"""Every error CoreMQ sends, as a stable machine-readable code beside its text.

The text of an error (``ERROR: <reason>`` over TCP, ``"error"`` in a
browser's error frame) is for people and may be reworded; its code is for
programs and does not change. :data:`ERROR_CODES` is the one table: each
code with the pattern its texts match, first match wins. The WebSocket
protocol puts ``error_code(text)`` in every error frame's ``code``; the table
is documented in ``docs/protocol.md`` (*Errors*), and a test keeps the two
equal.
"""

from __future__ import annotations

import re

__all__ = ["ERROR_CODES", "UNKNOWN_ERROR", "error_code"]

#: The code of a text that no pattern matches (a bug: every error the project sends has a code).
UNKNOWN_ERROR = "error"

#: ``(code, pattern)``, in the order they are tried; a pattern matches the start of the text.
ERROR_CODES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((code, re.compile(pattern)) for code, pattern in (
    # The frame layer (TCP): the frame could not be read.
    ("frame_too_large", r"frame too large: "),
    ("bad_header", r"frame must start with |frame length "),
    ("bad_frame", r"frame payload must be |queue name is not valid UTF-8"),
    ("timeout", r"timeout: "),
    # The JSON of a frame or of a message.
    ("invalid_json", r"invalid JSON: |text is not valid UTF-8|binary frames are not supported"),
    ("too_deep", r"JSON nested \d+ levels deep"),
    ("bad_message", r"a message must be a JSON object, array or string|publish needs a 'message'"),
    ("message_too_large", r"message too large: "),
    ("bad_queue_name", r"queue name |\?queues=|publish needs a 'queue'"),
    # Requests the broker does not know, or whose fields are wrong.
    ("unknown_request", r"unknown control key |unknown admin action |unknown action |a request must have an 'action'"),
    ("bad_request", r"a control request holds |coremq_\w+ takes |option |history |since\[|'since' must |'queues' must "
                    r"|a request must be a JSON object|ref must be |auth needs "),
    # Who may do what.
    ("permission_denied", r"permission denied: "),
    ("auth_failed", r"authentication failed"),
    ("auth_unavailable", r"authentication is not configured"),
    ("auth_blocked", r"too many failed authentications"),
    ("credentials_revoked", r"credentials revoked"),
    # Bounds.
    ("too_many_connections", r"too many connections"),
    ("too_many_subscriptions", r"too many subscriptions: "),
    ("too_many_queues", r"too many queues: "),
    ("rate_limited", r"publish rate limit exceeded: "),
    ("history_too_large", r"a history reply for \d+ queues does not fit"),
    ("messages_dropped", r"slow consumer: messages dropped"),
    ("slow_consumer", r"slow consumer"),
    # Where a message or a request cannot go.
    ("no_such_connection", r"no such connection: |no connection "),
    ("durable_unavailable", r"durable history unavailable: "),
    ("cluster_unavailable", r"cluster unavailable: "),
    # The store's requests (docs/store.md).
    ("store_not_found", r"key not found: "),
    ("store_exists", r"key exists: "),
    ("store_cas_mismatch", r"cas mismatch: "),
    ("store_too_large", r"value too large: "),
    ("store_not_numeric", r"value not numeric: "),
    ("store_unavailable", r"store unavailable: "),
    ("disconnected", r"disconnected by an administrator"),
    ("broker_unavailable", r"the broker is unavailable|connection to the broker lost|the bridge is closed"),
    ("internal_error", r"internal error"),
))


def error_code(text: str) -> str:
    """The code of the error whose text (without ``ERROR: ``) is ``text``; :data:`UNKNOWN_ERROR` if none."""
    for code, pattern in ERROR_CODES:
        if pattern.match(text):
            return code
    return UNKNOWN_ERROR
