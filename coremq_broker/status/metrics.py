"""The status snapshot in Prometheus' text format, for ``/metrics``.

A custom collector reads one snapshot (the same dict ``status.json`` serves)
and yields metric families; nothing is registered globally and nothing is
kept between scrapes, so the numbers are the broker's, even when the broker
runs in another process. Names follow Prometheus' conventions: ``coremq_``
prefix, base units in the name (``_bytes``, ``_seconds``), ``_total`` on
counters, timestamps as ``_timestamp_seconds``.

Connections are counted per transport rather than listed: a connection id as
a label would make a new time series per client. Per-queue series carry a
``queue`` label (public queues only; private id queues are left out). Rates
are not exported: Prometheus computes them from the counters with ``rate()``.

A node of a cluster (the Redis engine, docs/cluster.md) exports its own
figures, each series with a ``node`` label (its name), so the scrapes of
every node add up; ``coremq_cluster_*`` say how it sees the cluster
(Redis up, live nodes, its publishes through Redis).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from .cluster import engine_of
from .layer import layer_metrics
from .store import store_metrics

__all__ = ["SnapshotCollector", "render", "CONTENT_TYPE", "TRANSPORTS"]

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE

#: Transports that always get a ``coremq_connections`` series, even at zero.
TRANSPORTS = ("tcp", "websocket")


class SnapshotCollector(Collector):
    """Metric families for one status snapshot; ``snapshot=None`` means the broker could not be asked."""

    def __init__(self, snapshot: dict[str, Any] | None) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("coremq_up", "1 if the broker answered the status request, else 0.")
        up.add_metric([], 0 if self.snapshot is None else 1)
        yield up
        if self.snapshot is None:
            return
        yield from self._broker(self.snapshot["broker"], self.snapshot["source"])
        cluster = engine_of(self.snapshot)
        if cluster is None:
            yield from self._durable(self.snapshot["broker"].get("durable") or {})
        else:
            yield from self._cluster(cluster)
        yield from self._connections(self.snapshot["connections"])
        yield from self._queues(self.snapshot["queues"])
        yield from layer_metrics(self.snapshot)
        yield from store_metrics(self.snapshot)

    def _broker(self, broker: dict[str, Any], source: str) -> Iterator[Metric]:
        yield InfoMetricFamily("coremq_broker", "The broker's name, version and address.", value={
            "server": str(broker.get("server", "")), "version": str(broker.get("version", "")),
            "address": str(broker.get("address", "")), "role": str(broker.get("role", "")), "source": source,
        })
        for kind, name, help_text, key in _BROKER_SERIES:
            value = broker.get(key)
            if value is not None:  # memory and descriptors are unknown off Linux
                yield kind(name, help_text, value=float(value))

    def _durable(self, durable: dict[str, Any]) -> Iterator[Metric]:
        """The durable history's writer; nothing while no durable queue has used it."""
        if durable.get("state") not in ("ok", "unavailable"):
            return
        yield GaugeMetricFamily("coremq_durable_up", "1 if the durable history can be written, 0 while it fails.",
                                value=1 if durable["state"] == "ok" else 0)
        for kind, name, help_text, key in _DURABLE_SERIES:
            value = durable.get(key)
            if value is not None:  # free space is unknown where statvfs fails
                yield kind(name, help_text, value=float(value))

    def _cluster(self, engine: dict[str, Any]) -> Iterator[Metric]:
        """How this node sees the cluster (the Redis engine's description)."""
        yield GaugeMetricFamily("coremq_cluster_up", "1 while this node's Redis connection is up, else 0.",
                                value=1 if engine.get("state") == "ok" else 0)
        yield GaugeMetricFamily("coremq_cluster_nodes", "Live nodes of the cluster, this one included.",
                                value=1 + len(engine.get("others") or []))
        for kind, name, help_text, key in _CLUSTER_SERIES:
            value = engine.get(key)
            if isinstance(value, (int, float)):
                yield kind(name, help_text, value=float(value))

    def _connections(self, connections: list[dict[str, Any]]) -> Iterator[Metric]:
        per_transport = Counter({transport: 0 for transport in TRANSPORTS})
        per_transport.update(str(c.get("transport", "")) for c in connections)
        gauge = GaugeMetricFamily("coremq_connections", "Open client connections.", labels=["transport"])
        for transport, count in sorted(per_transport.items()):
            gauge.add_metric([transport], count)
        yield gauge
        yield GaugeMetricFamily("coremq_connections_buffered_bytes",
                                "Output waiting to be sent, summed over connections.",
                                value=sum(c.get("buffered") or 0 for c in connections))

    def _queues(self, queues: list[dict[str, Any]]) -> Iterator[Metric]:
        families = {
            "subscribers": GaugeMetricFamily("coremq_queue_subscribers", "Connections subscribed to the queue.",
                                             labels=["queue"]),
            "history": GaugeMetricFamily("coremq_queue_history_messages", "Messages held in the queue's history.",
                                         labels=["queue"]),
            "history_capacity": GaugeMetricFamily("coremq_queue_history_capacity_messages",
                                                  "Messages the queue's history can hold.", labels=["queue"]),
            "published": CounterMetricFamily("coremq_queue_messages_published",
                                             "Messages published to the queue.", labels=["queue"]),
            "last_publish": GaugeMetricFamily("coremq_queue_last_publish_timestamp_seconds",
                                              "When the last message was published to the queue.", labels=["queue"]),
        }
        for queue in queues:
            for key, family in families.items():
                value = queue.get(key)
                if value is not None:
                    family.add_metric([queue["name"]], value)
        yield from families.values()


#: (family, name, help, key in the snapshot's "broker") of the broker-wide series.
_BROKER_SERIES: tuple[tuple[type, str, str, str], ...] = (
    (GaugeMetricFamily, "coremq_start_time_seconds", "When the broker started, in seconds since the epoch.",
     "started"),
    (CounterMetricFamily, "coremq_connections_opened", "Connections accepted since the broker started.",
     "connections_total"),
    (GaugeMetricFamily, "coremq_queues", "Public queues the broker knows.", "queues"),
    (CounterMetricFamily, "coremq_messages_received", "Frames received from clients: publishes and requests.",
     "messages_in"),
    (CounterMetricFamily, "coremq_messages_delivered", "Messages delivered to subscribers.", "messages_out"),
    (CounterMetricFamily, "coremq_errors", "Requests answered with an ERROR.", "errors"),
    (CounterMetricFamily, "coremq_permission_denials", "Requests refused by the access policy or a private queue.",
     "denials"),
    (CounterMetricFamily, "coremq_auth_failures", "Logins (TCP and WebSocket) whose credentials were wrong.",
     "auth_failures"),
    (CounterMetricFamily, "coremq_auth_refused",
     "Login attempts refused unchecked: their address or username was over MAX_AUTH_FAILURES.", "auth_refused"),
    (GaugeMetricFamily, "coremq_auth_blocked", "Addresses and usernames over MAX_AUTH_FAILURES now.",
     "auth_blocked"),
    (CounterMetricFamily, "coremq_slow_consumers",
     "Subscribers judged slow consumers (stopped draining, or past MAX_WRITE_BUFFER).", "slow_consumers"),
    (CounterMetricFamily, "coremq_delivery_errors", "Deliveries or flushes to a connection that raised (skipped).",
     "delivery_errors"),
    # The bounds of coremq_broker/core/limits.py.
    (GaugeMetricFamily, "coremq_history_bytes", "Bytes held in all queues' histories.", "history_bytes"),
    (GaugeMetricFamily, "coremq_history_limit_bytes", "MAX_HISTORY_BYTES: the most all histories may hold.",
     "history_bytes_limit"),
    (CounterMetricFamily, "coremq_history_evicted",
     "Messages dropped from histories to stay under MAX_HISTORY_BYTES.", "history_evicted"),
    (CounterMetricFamily, "coremq_history_pages",
     "History replies cut short by the frame limit (the client asks for the rest).", "history_pages"),
    (CounterMetricFamily, "coremq_history_skipped",
     "Stored messages left out of a history reply: too large for any reply.", "history_skipped"),
    (CounterMetricFamily, "coremq_queues_refused", "New queues refused at MAX_QUEUES.", "queues_refused"),
    (CounterMetricFamily, "coremq_queues_forgotten", "Queues that held nothing, forgotten.", "queues_forgotten"),
    (CounterMetricFamily, "coremq_timeouts",
     "Connections closed for not sending or not finishing a frame in time.", "timeouts"),
    (CounterMetricFamily, "coremq_refused_per_address",
     "Connections refused at MAX_CONNECTIONS_PER_ADDRESS.", "refused_per_address"),
    (GaugeMetricFamily, "coremq_resident_memory_bytes", "Resident memory of the broker's process.", "rss_bytes"),
    (GaugeMetricFamily, "coremq_open_fds", "File descriptors the broker's process holds open.", "open_fds"),
)


#: (family, name, help, key in the snapshot's ``broker["durable"]``) of the durable history's series.
_DURABLE_SERIES: tuple[tuple[type, str, str, str], ...] = (
    (GaugeMetricFamily, "coremq_durable_pending_writes", "Durable writes waiting for the disk.", "pending"),
    (GaugeMetricFamily, "coremq_durable_pending_bytes", "Bytes of the durable writes waiting for the disk.",
     "pending_bytes"),
    (CounterMetricFamily, "coremq_durable_messages_committed", "Durable messages written to disk.", "committed"),
    (CounterMetricFamily, "coremq_durable_messages_failed",
     "Durable publishes whose write failed (answered with an ERROR, not delivered).", "failed"),
    (CounterMetricFamily, "coremq_durable_publishes_refused",
     "Durable publishes refused unwritten: the store was unavailable or too many writes were pending.",
     "refused"),
    (CounterMetricFamily, "coremq_durable_outages", "Times the durable history became unwritable.", "outages"),
    (GaugeMetricFamily, "coremq_durable_free_bytes", "Free space on the durable history's file system.",
     "free_bytes"),
)


#: (family, name, help, key in the Redis engine's description) of a cluster node's series.
_CLUSTER_SERIES: tuple[tuple[type, str, str, str], ...] = (
    (CounterMetricFamily, "coremq_cluster_batches_published", "Batches this node published through Redis.",
     "published"),
    (CounterMetricFamily, "coremq_cluster_batches_refused", "Batches Redis did not take (answered with an ERROR).",
     "refused"),
    (CounterMetricFamily, "coremq_cluster_reconnects", "Times this node's pub/sub connection was made again.",
     "reconnects"),
    (CounterMetricFamily, "coremq_cluster_probes_failed", "Pub/sub probes that did not come back in time.",
     "probes_failed"),
    (CounterMetricFamily, "coremq_cluster_resets", "Queues whose numbering restarted (Redis lost them).", "resets"),
    (GaugeMetricFamily, "coremq_cluster_channels", "Redis channels this node listens to.", "channels"),
    (GaugeMetricFamily, "coremq_cluster_waiting_batches", "Batches sent to Redis and not answered yet.", "waiting"),
)


class _NodeLabelled(Collector):
    """Every series of ``collector`` with the label ``node`` added."""

    def __init__(self, collector: Collector, node: str) -> None:
        self.collector, self.node = collector, node

    def collect(self) -> Iterator[Metric]:
        for family in self.collector.collect():
            family.samples = [sample._replace(labels={**sample.labels, "node": self.node})
                              for sample in family.samples]
            yield family


def render(snapshot: dict[str, Any] | None) -> bytes:
    """The text exposition of ``snapshot`` (``None``: only ``coremq_up 0``); a cluster node's with ``node`` labels."""
    registry = CollectorRegistry(auto_describe=False)
    collector: Collector = SnapshotCollector(snapshot)
    engine = engine_of(snapshot) if snapshot is not None else None
    if engine is not None:
        collector = _NodeLabelled(collector, str(engine.get("node")))
    registry.register(collector)
    return generate_latest(registry)
