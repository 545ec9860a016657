"""CoreMQ's Python client: a sans-I/O codec with a blocking and an asyncio front end.

    from coremq_client import MessageQueue
    with MessageQueue("127.0.0.1", queues=["news"]) as mq:
        mq.send_message("news", {"a": 1})
        for queue, message in mq:
            ...

This package never imports Django; the broker imports its codec, not the reverse.
"""

from __future__ import annotations

from .async_client import AsyncMessageQueue
from .codec import DEFAULT_MAX_FRAME_SIZE, DEFAULT_PORT, JSONCodec
from .errors import (
    AuthenticationFailed,
    ConnectionClosed,
    CoreMQError,
    FrameBodyError,
    FrameHeaderError,
    FrameTooLarge,
    InvalidQueueName,
    LocalUsageError,
    MessageError,
    PermissionDenied,
    ProtocolError,
    ServerError,
    SlowConsumer,
    Timeout,
)
from .protocol import Delivery, Gap
from .sync_client import MessageQueue

__all__ = [
    "AsyncMessageQueue",
    "AuthenticationFailed",
    "ConnectionClosed",
    "CoreMQError",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_PORT",
    "Delivery",
    "FrameBodyError",
    "FrameHeaderError",
    "FrameTooLarge",
    "Gap",
    "InvalidQueueName",
    "JSONCodec",
    "LocalUsageError",
    "MessageError",
    "MessageQueue",
    "PermissionDenied",
    "ProtocolError",
    "ServerError",
    "SlowConsumer",
    "Timeout",
]
