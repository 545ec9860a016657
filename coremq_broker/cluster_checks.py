"""The system check of the cluster engine: ``ENGINE = "redis"`` with a Redis that answers.

Ids (the conditions live in :mod:`coremq_broker.cluster.settings`):

- ``coremq.E100`` ``ENGINE`` is neither ``"memory"`` nor ``"redis"``
- ``coremq.E101`` ``REDIS_URL`` is not a ``redis://`` or ``rediss://`` URL with a host (and a numeric database)
- ``coremq.E102`` ``REDIS_PREFIX`` is empty, too long, or holds whitespace or braces
- ``coremq.E103`` ``NODE_NAME`` holds whitespace or is too long
- ``coremq.E105`` Redis is unreachable
- ``coremq.E106`` Redis is older than 7, or refuses a command the engine needs (ACL)
- ``coremq.E107`` Redis refused the credentials

Nothing is checked while ``ENGINE`` is unset or ``"memory"`` (the embedded
default). With ``"redis"`` the check connects (at most about a second when
Redis does not answer).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error

from .cluster.settings import ClusterSettingError, parse_settings, redis_problems
from .core.config import DEFAULT_HOST, DEFAULT_PORT

__all__ = ["check_cluster", "ENGINES"]

ENGINES = ("memory", "redis")
_OBJ = "settings.COREMQ"


def check_cluster(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report a cluster setting that cannot work, or a Redis that cannot be used."""
    raw = getattr(settings, "COREMQ", {})
    if not isinstance(raw, dict):
        return []  # coremq.E001 says so
    engine = raw.get("ENGINE", "memory")
    if engine == "memory":
        return []
    if engine not in ENGINES:
        return [Error(f"COREMQ['ENGINE'] is {engine!r}", hint="Use 'memory' (one node, the default) or 'redis' "
                      "(several nodes sharing one Redis; see docs/cluster.md).", obj=_OBJ, id="coremq.E100")]
    try:
        cluster = parse_settings(raw.get("REDIS_URL"), key_prefix=raw.get("REDIS_PREFIX"),
                                 node_name=raw.get("NODE_NAME"), host=raw.get("HOST", DEFAULT_HOST),
                                 port=raw.get("PORT", DEFAULT_PORT))
    except ClusterSettingError as error:
        return [Error(str(error), hint=error.hint, obj=_OBJ, id=error.id)]
    return [Error(problem.message, hint=problem.hint, obj=_OBJ, id=problem.id)
            for problem in redis_problems(cluster, timeout=1.0)]
