"""The benchmark harness end to end, against CoreMQ only, with tiny counts (no timing asserted)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.__main__ import main


def test_quick_run_verifies_every_delivery_and_writes_results(tmp_path: Path) -> None:
    """`python -m bench all --quick` starts the broker, verifies all messages, writes JSON and PNG."""
    rc = main(["all", "--quick", "--subscribers", "1,10", "--max-messages", "300", "--conns", "50",
               "--quiet-wait", "0", "--results-dir", str(tmp_path), "--name", "smoke"])
    assert rc == 0
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.png").stat().st_size > 0
    assert results["failures"] == []
    fanout = results["fanout"]["runs"]
    assert {r["subscribers"] for r in fanout} == {1, 10}
    for run in fanout:
        assert run["verified"] and run["error"] is None
        assert run["published"] == 300 and run["delivered"] == 300 * run["subscribers"]
        assert run["rate"] > 0 and run["cpu"]["server"] >= 0
    latency = results["latency"]["runs"]
    assert {r["mode"] for r in latency} == {"inflight", "steady"}
    assert all(r["verified"] and r["samples"] > 0 for r in latency)
    conns = results["conns"]["runs"]
    assert conns[0]["target"] == "coremq" and conns[0]["held"] == 50
    assert results["meta"]["targets"]["coremq"]["version"]
    assert any(c["target"].startswith("idle connection") for c in results["checks"])
