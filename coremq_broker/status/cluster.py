"""The cluster's nodes in the status snapshot (``status.json``, the page, ``/metrics``), from their heartbeats.

With the Redis engine (docs/cluster.md) the broker's status reply carries the
engine's description under ``durable``: this node's name and state and
``others``, the other live nodes as their last heartbeat said (refreshed every
heartbeat interval; a node that stopped beating drops out after the node
timeout). :func:`add_cluster` turns it into ``snapshot["cluster"]``: every
node (name, address, uptime, connections, queues, rates, memory; ``self`` for
the node that answered) and the cluster's totals. Without the Redis engine the
snapshot is left as it is.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_cluster", "NODE_FIELDS", "TOTALS"]

#: What the snapshot shows of each node (the heartbeat's figures, ClusterEngine.FIGURES, and its identity).
NODE_FIELDS = ("name", "address", "uptime", "connections", "queues", "messages_in", "messages_out", "rate_in",
               "rate_out", "rss_bytes")
#: Figures summed over the nodes (queues are not: several nodes know the same queue).
TOTALS = ("connections", "messages_in", "messages_out", "rate_in", "rate_out", "rss_bytes")


def engine_of(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    """The Redis engine's description in ``snapshot``, or None for another engine."""
    engine = snapshot.get("broker", {}).get("durable") or {}
    return engine if engine.get("engine") == "redis" else None


def add_cluster(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` with ``cluster``: ``node`` (the one that answered), ``state``, ``nodes`` by name, ``totals``."""
    engine = engine_of(snapshot)
    if engine is None:
        return snapshot
    broker = snapshot["broker"]
    here = {field: broker.get(field) for field in NODE_FIELDS}
    here.update(name=engine.get("node"), self=True)
    nodes = [here] + [{**{field: other.get(field) for field in NODE_FIELDS}, "self": False}
                      for other in engine.get("others", [])]
    nodes.sort(key=lambda node: str(node["name"]))
    totals: dict[str, Any] = {"nodes": len(nodes)}
    for field in TOTALS:
        totals[field] = sum(node[field] for node in nodes if isinstance(node.get(field), (int, float)))
    snapshot["cluster"] = {"node": engine.get("node"), "state": engine.get("state"), "redis": engine.get("redis"),
                           "nodes": nodes, "totals": totals}
    return snapshot
