"""``python -m bench layer --quick`` runs both layers end to end and writes its results (no figure is judged)."""

from __future__ import annotations

import json
import subprocess
import sys

from servers import ROOT


def test_bench_layer_quick(tmp_path):
    """The layer benchmark delivers every group message on both layers and writes layer.json."""
    done = subprocess.run([sys.executable, "-m", "bench", "layer", "--quick", "--members", "10",
                           "--results-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "layer.json").read_text())
    for backend in ("coremq", "redis"):
        entry = results["layers"][backend]
        assert entry["group_send"]["ok"] and entry["group_send"]["lost"] == 0
        assert entry["round_trips_local"]["round_trips"] > 0 and entry["round_trips_normal"]["round_trips"] > 0
    assert "CoreMQChannelLayer" in done.stdout and "channels_redis" in done.stdout


def test_websocket_bench_channels_row_on_the_coremq_layer(tmp_path):
    """bench websocket's 'Channels consumer + CoreMQ layer' row: the same consumer delivers every message."""
    from bench import websocket

    rc = websocket.main(["--coremq", "none", "--peers", "channels-coremq", "--subscribers", "3,30",
                         "--duration", "0.3", "--latency-subscribers", "3", "--rate", "50", "--latency-duration", "0.3",
                         "--quiet-wait", "0", "--quiet-budget", "0", "--results-dir", str(tmp_path)])
    assert rc == 0
    entry = json.loads((tmp_path / "websocket.json").read_text())["servers"]["channels-coremq"]
    assert entry["label"] == "Channels consumer + CoreMQ layer"
    for row in entry["throughput"]:
        assert row["ok"] and row["lost"] == 0 and row["delivered"] == row["published"] * row["subscribers"] > 0
    assert entry["latency"]["ok"] and entry["latency"]["samples"] > 0
