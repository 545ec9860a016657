"""The Channels layer's figures on the status page, in ``status.json`` and ``/metrics``.

:class:`~coremq_broker.layers.CoreMQChannelLayer` counts the messages it
drops (a member channel full, a group member expired) per channel and per
group in the process it runs in: under ``run_coremq`` that is the process that
serves this page. The figures join the snapshot as ``channel_layer``.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from ..layers import layer_drops

__all__ = ["add_layer_drops", "layer_metrics"]


def add_layer_drops(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``snapshot`` with ``channel_layer``: ``{"channels": {name: n}, "groups": {...}, "expired_members": {...},
    "total": n}``."""
    snapshot["channel_layer"] = layer_drops()
    return snapshot


def layer_metrics(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """``coremq_layer_dropped_total`` per channel and per group, and ``coremq_layer_expired_members_total``."""
    drops = snapshot.get("channel_layer") or layer_drops()
    per_channel = CounterMetricFamily("coremq_layer_dropped", "Channel layer messages dropped for a full channel, "
                                      "per channel.", labels=["channel"])
    for name, count in sorted(drops["channels"].items()):
        per_channel.add_metric([name], count)
    yield per_channel
    per_group = CounterMetricFamily("coremq_layer_group_dropped", "Channel layer group messages dropped for a full "
                                    "member channel, per group.", labels=["group"])
    for name, count in sorted(drops["groups"].items()):
        per_group.add_metric([name], count)
    yield per_group
    expired = CounterMetricFamily("coremq_layer_expired_members", "Group members the channel layer removed after "
                                  "group_expiry, per group.", labels=["group"])
    for name, count in sorted(drops["expired_members"].items()):
        expired.add_metric([name], count)
    yield expired
