"""``python -m bench cluster`` end to end, tiny: a private redis-server, the embedded broker, one node and two
(no timing asserted: the figures are reported, docs/cluster.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.timeout(300)


def test_cluster_bench_verifies_every_delivery_and_writes_results(tmp_path: Path) -> None:
    rc = main(["cluster", "--quick", "--subscribers", "4,10", "--max-messages", "200", "--results-dir", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "cluster-quick.json").read_text())
    fanout = results["runs"]["fanout"]
    assert {(r["target"], r["subscribers"]) for r in fanout} == {
        (t, s) for t in ("embedded", "one node", "two nodes") for s in (4, 10)}
    for run in fanout:
        assert run["verified"] and run["error"] is None
        assert run["published"] == 200 and run["delivered"] == 200 * run["subscribers"]
        assert run["nodes"] == (2 if run["target"] == "two nodes" else 1)
    latency = results["runs"]["latency"]
    assert {r["target"] for r in latency} == {"embedded, one node", "one node on Redis", "cross-node", "Redis pub/sub"}
    assert all(r["verified"] and r["samples"] > 0 for r in latency)
    summary = results["summary"]
    assert summary["failures"] == []
    assert {c["target"].split(" ")[0] for c in summary["checks"]} == {"two", "cross-node", "no"}
