"""The store's figures on the status page, in ``status.json`` and ``/metrics``.

The store runs in the process of ``run_coremq``
(:class:`~coremq_broker.transports.memcached.MemcachedService`); when this
page is served by that process, the figures join the snapshot as ``store``:
``items``, ``bytes``, ``limit_bytes``, ``hits``, ``misses``, ``evictions``,
``connections``, ``connections_total``, ``address``. Elsewhere (a separate
daphne, ``--no-memcached``) ``store`` is null: no control request carries the
store's figures over the protocol yet.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..transports.memcached import MemcachedService

__all__ = ["add_store_figures", "store_metrics"]


def add_store_figures(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` with ``store``: the figures of the store this process serves, or None."""
    service = MemcachedService.running()
    snapshot["store"] = None if service is None else service.figures()
    return snapshot


#: (family, name, help, key in the snapshot's ``store``).
_SERIES: tuple[tuple[type, str, str, str], ...] = (
    (GaugeMetricFamily, "coremq_store_items", "Items held by the store (memcached protocol).", "items"),
    (GaugeMetricFamily, "coremq_store_bytes", "Bytes the store holds: keys, values and a fixed overhead per item.",
     "bytes"),
    (GaugeMetricFamily, "coremq_store_limit_bytes", "MEMCACHED_MEMORY: the most the store may hold.", "limit_bytes"),
    (CounterMetricFamily, "coremq_store_hits", "Store reads that found their key.", "hits"),
    (CounterMetricFamily, "coremq_store_misses", "Store reads that did not find their key.", "misses"),
    (CounterMetricFamily, "coremq_store_evictions", "Items evicted to stay under MEMCACHED_MEMORY.", "evictions"),
    (GaugeMetricFamily, "coremq_store_connections", "Open memcached protocol connections.", "connections"),
)


def store_metrics(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """The store's series; none when this process serves no store."""
    figures = snapshot.get("store")
    if not figures:
        return
    for kind, name, help_text, key in _SERIES:
        yield kind(name, help_text, value=float(figures.get(key) or 0))
