"""Several CoreMQ nodes, every one a master, sharing one Redis (issue 15; docs/cluster.md).

A Django-free library: settings and their checks (:mod:`.settings`), the key
names (:mod:`.keys`), the publish script (:mod:`.scripts`), the pub/sub
subscriber (:mod:`.subscriber`), heartbeats (:mod:`.nodes`) and the
:class:`RedisEngine` that holds them together (:mod:`.engine`).
"""

from .engine import Delivery, HistoryPage, Numbered, RedisEngine
from .errors import ClusterUnavailable
from .settings import ClusterSettingError, ClusterSettings, Problem, default_node_name, parse_settings, redis_problems

__all__ = ["RedisEngine", "Numbered", "HistoryPage", "Delivery", "ClusterUnavailable", "ClusterSettings",
           "ClusterSettingError", "Problem", "parse_settings", "default_node_name", "redis_problems"]
