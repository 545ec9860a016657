"""Where a node finds its Redis, and what it is called: parsed once, checked with ids and hints.

Django-free: ``run_coremq`` and the Django system check
(:mod:`coremq_broker.cluster_checks`) both build a :class:`ClusterSettings` with
:func:`parse_settings` and ask :func:`redis_problems` what is wrong with it.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from coremq_client.errors import CoreMQError

__all__ = ["ClusterSettings", "ClusterSettingError", "Problem", "parse_settings", "default_node_name",
           "redis_problems", "DEFAULT_REDIS_URL", "DEFAULT_KEY_PREFIX"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_KEY_PREFIX = "coremq:"
_SCHEMES = ("redis", "rediss")
# A prefix ends every key name's deployment part; whitespace and braces are kept out of it
# (braces are Redis Cluster hash tags, which this engine does not use).
_PREFIX = re.compile(r"[^\s{}]{1,64}\Z")


class ClusterSettingError(CoreMQError, ValueError):
    """A cluster setting that cannot work; ``id`` and ``hint`` as a Django check reports them."""

    def __init__(self, id: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.id = id
        self.hint = hint


@dataclass(frozen=True)
class Problem:
    """Something wrong with the cluster's Redis, for a system check: an ``Error`` with ``id`` and ``hint``."""

    id: str
    message: str
    hint: str


@dataclass(frozen=True)
class ClusterSettings:
    """One node's view of the cluster. Times are in seconds.

    Every key this node reads or writes starts with ``key_prefix``, so that
    several deployments can share one Redis (docs/cluster.md lists the keys).
    """

    redis_url: str = DEFAULT_REDIS_URL
    key_prefix: str = DEFAULT_KEY_PREFIX
    node_name: str = ""
    #: A queue's ids and history expire after this long without a publish (its
    #: next publish starts a new epoch). 0: never.
    queue_ttl: float = 7 * 24 * 3600.0
    #: A node's heartbeat comes this often and expires after ``node_timeout``.
    heartbeat_interval: float = 2.0
    node_timeout: float = 10.0
    #: The pub/sub probe: a message through Redis to this node every
    #: ``probe_interval``; one not back within ``probe_timeout`` ends the
    #: subscriber connection, which is then made again.
    probe_interval: float = 2.0
    probe_timeout: float = 3.0
    #: A command (a publish, a history read) that Redis does not answer within
    #: this long fails (the broker answers ``ERROR: ...``).
    command_timeout: float = 5.0
    connect_timeout: float = 2.0
    #: Reconnecting waits 0.1 s, then twice as long each time, at most this long.
    reconnect_max: float = 2.0
    #: Batches of this node sent to Redis and not answered yet: past this many a
    #: publish is refused at once (``cluster busy``); a publisher is not read from a
    #: quarter of it until they drain to an eighth (flow control).
    max_pending: int = 10_000
    #: Options for redis-py beside the URL's (``ssl_ca_certs``, ...).
    redis_options: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_options(self, **options: Any) -> "ClusterSettings":
        """A copy with ``options`` replaced; unknown names raise TypeError."""
        return replace(self, **options)


def default_node_name(host: str, port: int) -> str:
    """``<host>:<port>`` of the node's TCP listener; a wildcard host becomes this machine's name.

    Port 0 (any free port, not known yet) gives ``<machine>-<process id>``: ``<host>:0`` would
    name every such node alike.
    """
    if port == 0:
        return f"{socket.gethostname()}-{os.getpid()}"
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


def parse_settings(redis_url: str | None = None, *, key_prefix: str | None = None, node_name: str | None = None,
                   host: str = "127.0.0.1", port: int = 6747, **options: Any) -> ClusterSettings:
    """Checked :class:`ClusterSettings`; raise :class:`ClusterSettingError` (with an id and a hint) if unusable.

    ``redis_url`` is ``redis://[[user]:password@]host[:port][/db]`` or
    ``rediss://`` (TLS); ``node_name`` defaults to ``<host>:<port>`` of the
    node's listener.
    """
    url = DEFAULT_REDIS_URL if redis_url is None else redis_url
    if not isinstance(url, str) or not url:
        raise ClusterSettingError("coremq.E101", f"REDIS_URL must be a non-empty string, not {url!r}",
                                  f"Set it to a URL such as {DEFAULT_REDIS_URL!r}.")
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ClusterSettingError("coremq.E101", f"REDIS_URL {redact(url)!r}: the scheme must be redis:// or rediss://",
                                  f"Use a URL such as {DEFAULT_REDIS_URL!r} (rediss:// for TLS).")
    try:
        parts.port
    except ValueError as exc:
        raise ClusterSettingError("coremq.E101", f"REDIS_URL {redact(url)!r}: {exc}",
                                  "The port must be a number from 1 to 65535.") from None
    if not parts.hostname:
        raise ClusterSettingError("coremq.E101", f"REDIS_URL {redact(url)!r} names no host",
                                  f"Use a URL such as {DEFAULT_REDIS_URL!r}.")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ClusterSettingError("coremq.E101", f"REDIS_URL {redact(url)!r}: the database must be a number",
                                  "Write the database number after the host, as in redis://host:6379/0.")
    prefix = DEFAULT_KEY_PREFIX if key_prefix is None else key_prefix
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ClusterSettingError("coremq.E102", f"REDIS_PREFIX {prefix!r} is not usable",
                                  "Use 1 to 64 characters without whitespace or braces, such as 'coremq:'.")
    name = default_node_name(host, port) if not node_name else node_name
    if not isinstance(name, str) or any(ch.isspace() for ch in name) or len(name) > 200:
        raise ClusterSettingError("coremq.E103", f"NODE_NAME {name!r} is not usable",
                                  "Use up to 200 characters without whitespace; it defaults to <host>:<port>.")
    settings = ClusterSettings(redis_url=url, key_prefix=prefix, node_name=name)
    try:
        return settings.with_options(**options)
    except TypeError as exc:
        raise ClusterSettingError("coremq.E104", f"unknown cluster option: {exc}",
                                  "See ClusterSettings in coremq_broker/cluster/settings.py.") from None


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def redis_problems(settings: ClusterSettings, timeout: float = 2.0) -> list[Problem]:
    """What keeps this node from using its Redis, found by connecting (blocking, at most ~``timeout`` s).

    Empty when Redis answers PING, runs version 7 or later and runs Lua
    scripts. For a Django system check (it blocks: not for the event loop).
    """
    import redis
    from redis.exceptions import AuthenticationError, RedisError, ResponseError

    where = redact(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                  **settings.redis_options)
    try:
        client.ping()
        info = client.info("server")
        version = str(info.get("redis_version", "0"))
        if int(version.split(".")[0]) < 7:
            return [Problem("coremq.E106", f"Redis at {where} is version {version}; the cluster engine needs 7 or later",
                            "Upgrade Redis (Debian's redis-server package is 7).")]
        client.eval("return 1", 0)
    except AuthenticationError as exc:
        return [Problem("coremq.E107", f"Redis at {where} refused the credentials: {exc}",
                        "Put the right user and password in REDIS_URL (redis://user:password@host:port/0).")]
    except ResponseError as exc:
        return [Problem("coremq.E106", f"Redis at {where} refused a command the engine needs: {exc}",
                        "The engine needs PING, INFO, EVAL/EVALSHA, XADD, PUBLISH and SUBSCRIBE (check the ACL).")]
    except (RedisError, OSError) as exc:
        return [Problem("coremq.E105", f"Redis at {where} is unreachable: {exc}",
                        "Start Redis there, or point REDIS_URL (or run_coremq --redis) at a running one.")]
    finally:
        client.close()
    return []
