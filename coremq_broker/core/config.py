"""The broker's limits and defaults, as one immutable value with no Django in it.

``coremq_broker.conf`` builds a :class:`BrokerConfig` from ``settings.COREMQ``;
code that runs without Django (``start()``, tests, benchmarks) builds one
directly. Every limit has its default here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from coremq_client.codec import DEFAULT_MAX_FRAME_SIZE, DEFAULT_MAX_QUEUE_NAME_LENGTH, DEFAULT_PORT, JSONCodec

__all__ = ["BrokerConfig", "DEFAULT_PORT", "DEFAULT_HOST"]

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class BrokerConfig:
    """Everything that shapes a broker's behaviour, with the defaults in force."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    server_name: str = "CoreMQ"
    #: Messages kept per queue for history requests.
    history_length: int = 10
    #: Largest frame accepted, in bytes (queue name, space and JSON).
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_queue_name_length: int = DEFAULT_MAX_QUEUE_NAME_LENGTH
    #: Queues one connection may subscribe to.
    max_subscriptions: int = 1000
    #: The hard limit: a connection whose unsent output (its own buffer,
    #: beside the socket's) passes this many bytes is a slow consumer at once;
    #: ``slow_consumer_policy`` says what happens to it.
    max_write_buffer: int = 8 * 2**20
    #: What happens to a slow consumer: "disconnect" or "drop" (its oldest messages).
    slow_consumer_policy: str = "disconnect"
    #: The socket's high/low water marks: above ``write_high`` the broker keeps
    #: output in the connection's own bounded buffer and stops reading the
    #: connection's requests until the socket drains below ``write_low``.
    write_high: int = 64 * 2**10
    write_low: int = 16 * 2**10
    #: Flow control (docs/reliability.md). A subscriber whose socket is over
    #: ``write_high`` holds the publishers of what it is sent (they are not
    #: read) until it drains below ``write_low``; one that has not drained for
    #: ``slow_consumer_timeout`` seconds while holding them is a slow consumer.
    #: ``max_read_per_iteration`` bytes are read from one connection per loop
    #: iteration (plus the rest of the read that crosses it) before its output
    #: is written, and one iteration's fan-out to a queue is handed to each
    #: subscriber in pieces of at most ``max_fanout_blob`` bytes (whole frames).
    slow_consumer_timeout: float = 2.0
    max_read_per_iteration: int = 256 * 2**10
    max_fanout_blob: int = 2**20
    #: Limits: connections in all and per authenticated user, publishes per
    #: second per connection (0, the default, sets none: one connection cannot
    #: outrun the broker here, and a limit would cap honest throughput; set one
    #: where clients are not trusted, see docs/security.md), failed
    #: authentications per address and per username, TCP and WebSocket alike
    #: (an attempt counts before it is checked; each failure doubles the wait
    #: before its answer; past the limit within five minutes further attempts
    #: are refused unchecked: access.FailureTracker).
    max_connections: int = 20_000
    max_connections_per_user: int = 100
    max_publish_rate: int = 0
    max_auth_failures: int = 10
    #: Bounds on what clients can make the broker hold (coremq_broker/core/limits.py,
    #: docs/security.md): seconds from the welcome to a TCP client's first frame
    #: (enforced while connections are scarce: see Bounds.connections_scarce),
    #: and to finish a frame once started; anonymous connections per client
    #: address (0: no limit); queues in all (connections' id queues not
    #: counted); bytes held in all histories (past it the oldest messages of the
    #: least recently published queues go); seconds after which a queue with no
    #: subscribers, no history and default settings is forgotten.
    first_frame_timeout: float = 30.0
    frame_timeout: float = 30.0
    max_connections_per_address: int = 100
    max_queues: int = 100_000
    max_history_bytes: int = 64 * 2**20
    queue_idle_timeout: float = 300.0
    #: TLS on the TCP listener: certificate and key files (PEM).
    tls_cert: str = ""
    tls_key: str = ""
    #: Durable history: the SQLite file, whether every queue is durable (else
    #: only queues whose settings say so), and SQLite's synchronous level
    #: (NORMAL survives a killed process, FULL also a power cut).
    durable_path: str = "coremq-history.sqlite3"
    durable_all: bool = False
    durable_synchronous: str = "NORMAL"
    #: Durable writes in flight (queued for the disk, not yet committed), in
    #: number and in bytes; past either a durable publish is refused at once
    #: (``ERROR: durable history unavailable: ...``) instead of held in memory.
    durable_max_pending: int = 10_000
    durable_max_pending_bytes: int = 64 * 2**20
    #: Seconds between retries, at most, while the durable history cannot be
    #: written (the first retry comes after 0.1 s, each next one waits twice as long).
    durable_retry_max: float = 2.0
    #: Seconds that close() waits for BYE and pending output to be flushed.
    shutdown_timeout: float = 5.0
    codec: JSONCodec = field(default_factory=JSONCodec, compare=False)

    def with_options(self, **options: Any) -> "BrokerConfig":
        """Return a copy with ``options`` replaced; unknown names raise TypeError."""
        known = {f.name for f in fields(self)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown broker option(s): {', '.join(sorted(unknown))}")
        return replace(self, **options)
