"""``python -m bench cluster [--quick]``: one CoreMQ node against two on one Redis (docs/cluster.md).

Starts a private ``redis-server`` on a free port (no persistence) and
CoreMQ as ``run_coremq`` serves it (``--no-web --no-memcached --port 0``):
the embedded broker (no Redis), one node on the Redis, and two nodes on it.
The load generator of ``python -m bench fanout`` (:mod:`bench.fanout`, every
delivery verified: no loss, no duplicate, in order) then measures, runs
interleaved:

- **fan-out** at S = 100 and 1,000: one publisher on the first node, the S
  subscribers spread over the nodes (every other one on the second node);
  delivered messages per second;
- **latency**, one message in flight (:mod:`bench.latency`): publisher and
  subscriber on one node (embedded, and on Redis), on two nodes (cross-node),
  and Redis pub/sub used directly (the same Redis).

Writes ``bench/results/cluster[-quick].json`` and prints a table with the
issue's targets (two nodes >= 1.5x one node at S = 1,000, cross-node p50 <=
3x single-node p50) judged; exits 1 only if a run failed (lost, duplicated,
reordered a message, or failed otherwise), not for a missed target: the
machine decides those, and they are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .coremq_process import CoreMQProcess
from .fanout import FanoutSettings, drive, new_topic
from .latency import PERCENTILES, LatencySettings, _Probe
from .measure import CpuMeter, percentile
from .net import Link, close_links, new_event_loop, open_links
from .protocols import WIRES, CoreMQWire
from .streams import SeqStream
from .targets import Target, probe_coremq

__all__ = ["main"]

RESULTS = Path(__file__).resolve().parent / "results"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: The issue's targets.
SCALE_TARGET = 1.5  # two nodes' fan-out rate at S = 1,000 over one node's
LATENCY_TARGET = 3.0  # cross-node p50 over single-node p50


class RedisProcess:
    """A private redis-server on a free port, without persistence."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class NodeProcess(CoreMQProcess):
    """``run_coremq --no-web --no-memcached --port 0``, a node on ``redis_url`` when given."""

    def __init__(self, redis_url: str | None, name: str, log_path: Path | None) -> None:
        super().__init__("command", log_path=log_path)
        self.redis_url = redis_url
        self.name = name

    def argv(self) -> list[str]:
        cluster = ["--redis", self.redis_url, "--node-name", self.name] if self.redis_url else []
        return [*super().argv(), "--no-memcached", *cluster]


@dataclass
class Nodes(Target):
    """A target of several processes: their CPU time and memory summed; ``ports`` one per node."""

    ports: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        import psutil

        return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in self.pids)

    def rss(self) -> int:
        import psutil

        return sum(psutil.Process(pid).memory_info().rss for pid in self.pids)


def nodes_target(wire: Any, processes: Sequence[Any], version: str = "") -> Nodes:
    ports = [p.port for p in processes]
    pids = [p.pid if hasattr(p, "pid") else p.process.pid for p in processes]
    return Nodes(wire, ports[0], pids[0], version, ports=ports, pids=pids)


async def fanout(target: Nodes, subscribers: int, settings: FanoutSettings) -> dict[str, Any]:
    """One verified fan-out run: the publisher on the first node, subscriber i on node ``i % len(ports)``."""
    wire, topic, links = target.wire, new_topic(), []
    row: dict[str, Any] = {"subscribers": subscribers, "nodes": len(target.ports)}
    try:
        subs: list[Link] = [None] * subscribers  # type: ignore[list-item]
        for n, port in enumerate(target.ports):
            mine = list(range(n, subscribers, len(target.ports)))
            opened = await open_links(port, [wire.subscriber(topic, i) for i in mine], name=f"node {n} subscriber",
                                      spread=wire.spread_sources)
            links += opened
            for i, link in zip(mine, opened):
                subs[i] = link
        publisher = (await open_links(target.ports[0], [wire.publisher(0)], name="publisher",
                                      spread=wire.spread_sources))[0]
        links.append(publisher)
        run, verifiers = await drive(target, settings, topic, publisher, subs)
        seconds = run.t_delivered - run.t_start
        verified = all(v.count == run.published and v.error is None for v in verifiers)
        row.update(published=run.published, delivered=run.delivered, seconds=round(seconds, 4),
                   rate=round(run.delivered / seconds, 1) if seconds > 0 else 0.0, verified=verified,
                   cpu=run.cpu.as_dict() if run.cpu else None,
                   error=None if verified else "a subscriber's count does not match the publishes")
    except (AssertionError, ConnectionError, OSError, TimeoutError) as exc:
        row.update(verified=False, error=f"{type(exc).__name__}: {exc}", rate=0.0)
    finally:
        close_links(links)
        await asyncio.sleep(0.2 + subscribers / 5000)
    return row


async def latency(target: Nodes, settings: LatencySettings) -> dict[str, Any]:
    """One in flight: the publisher on the first node, the subscriber on the last (the same one if one node)."""
    wire, topic, links = target.wire, new_topic(), []
    row: dict[str, Any] = {}
    try:
        subscriber = (await open_links(target.ports[-1], [wire.subscriber(topic, 0)], name="subscriber"))[0]
        links.append(subscriber)
        publisher = (await open_links(target.ports[0], [wire.publisher(0)], name="publisher"))[0]
        links.append(publisher)
        verifier = wire.delivery_verifier(topic, wire.delivery_stream(topic))
        probe = _Probe("inflight", settings, SeqStream(wire.publish_frame(topic)), publisher, verifier,
                       wire.publisher_verifier(1), wire.acks, CpuMeter(target))
        subscriber.on_lost = publisher.on_lost = probe.lost
        subscriber.set_sink(probe.on_delivery)
        publisher.set_sink(probe.on_ack)
        await probe.run()
        samples = sorted(probe.latencies[len(probe.latencies) // 20:])
        verified = verifier.count == probe.sent and verifier.error is None
        row.update(samples=len(samples), verified=verified,
                   percentiles_us={f"p{q:g}": round(percentile(samples, q) / 1000, 1) for q in PERCENTILES},
                   error=None if verified else "deliveries do not match the publishes")
    except (AssertionError, ConnectionError, OSError, TimeoutError) as exc:
        row.update(verified=False, error=f"{type(exc).__name__}: {exc}", samples=0)
    finally:
        close_links(links)
        await asyncio.sleep(0.1)
    return row


async def _measure(targets: dict[str, Nodes], args: argparse.Namespace) -> dict[str, Any]:
    runs = args.runs or (1 if args.quick else 3)
    duration = args.duration or (0.3 if args.quick else 2.0)
    fan = FanoutSettings(duration=duration, max_messages=args.max_messages)
    lat = LatencySettings(duration=duration, max_messages=args.max_messages)
    results: dict[str, Any] = {"fanout": [], "latency": []}
    for subscribers in args.subscribers:
        for repeat in range(runs):  # interleaved: each target in turn
            for name in ("embedded", "one node", "two nodes"):
                row = await fanout(targets[name], subscribers, fan)
                row.update(target=name, repeat=repeat)
                results["fanout"].append(row)
                print(f"  fan-out S={subscribers} {name}: {row['rate']:,.0f} msg/s"
                      + (f" FAILED {row['error']}" if row.get("error") else ""), file=sys.stderr, flush=True)
    for repeat in range(runs):
        for name, label in (("embedded", "embedded, one node"), ("one node", "one node on Redis"),
                            ("two nodes", "cross-node"), ("redis", "Redis pub/sub")):
            row = await latency(targets[name], lat)
            row.update(target=label, repeat=repeat)
            results["latency"].append(row)
            print(f"  latency {label}: p50 {row.get('percentiles_us', {}).get('p50', 0):.0f} us"
                  + (f" FAILED {row['error']}" if row.get("error") else ""), file=sys.stderr, flush=True)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Medians per (target, S) and per latency target, and the issue's targets judged."""
    rates: dict[str, dict[str, float]] = {}
    for row in results["fanout"]:
        rates.setdefault(str(row["subscribers"]), {}).setdefault(row["target"], [])  # type: ignore[arg-type]
        rates[str(row["subscribers"])][row["target"]].append(row["rate"])  # type: ignore[union-attr]
    fan = {s: {t: statistics.median(v) for t, v in by.items()} for s, by in rates.items()}  # type: ignore[arg-type]
    lat: dict[str, dict[str, float]] = {}
    for row in results["latency"]:
        if row.get("verified"):
            for key, value in row["percentiles_us"].items():
                lat.setdefault(row["target"], {}).setdefault(key, []).append(value)  # type: ignore[arg-type]
    latency_us = {t: {k: statistics.median(v) for k, v in ps.items()} for t, ps in lat.items()}  # type: ignore[arg-type]
    top = str(max(int(s) for s in fan)) if fan else None
    checks = []
    if top is not None and fan[top].get("one node"):
        ratio = fan[top]["two nodes"] / fan[top]["one node"]
        checks.append({"target": f"two nodes >= {SCALE_TARGET}x one node at S={top}", "value": round(ratio, 2),
                       "met": ratio >= SCALE_TARGET})
    single, cross = latency_us.get("one node on Redis", {}).get("p50"), latency_us.get("cross-node", {}).get("p50")
    if single and cross:
        ratio = cross / single
        checks.append({"target": f"cross-node p50 <= {LATENCY_TARGET}x single-node p50 (one node on Redis)",
                       "value": round(ratio, 2), "met": ratio <= LATENCY_TARGET})
    embedded = latency_us.get("embedded, one node", {}).get("p50")
    if embedded and cross:
        ratio = cross / embedded
        checks.append({"target": f"cross-node p50 <= {LATENCY_TARGET}x single-node p50 (the embedded broker)",
                       "value": round(ratio, 2), "met": ratio <= LATENCY_TARGET})
    failures = [f"{r['target']} {r.get('subscribers', '')}: {r['error']}" for r in results["fanout"] + results["latency"]
                if r.get("error") or not r.get("verified")]
    checks.append({"target": "no loss (every run verified)", "value": len(failures), "met": not failures})
    return {"fanout": fan, "latency_us": latency_us, "checks": checks, "failures": failures}


def render(summary: dict[str, Any]) -> str:
    lines = ["fan-out, delivered msg/s   embedded    one node   two nodes   two / one"]
    for s, by in summary["fanout"].items():
        one, two = by.get("one node", 0), by.get("two nodes", 0)
        lines.append(f"  S={s:<6}               {by.get('embedded', 0):>10,.0f} {one:>11,.0f} {two:>11,.0f}"
                     f"   {two / one if one else 0:>8.2f}x")
    lines.append("latency, one in flight (us)            p50       p99")
    for name, ps in summary["latency_us"].items():
        lines.append(f"  {name:<30} {ps.get('p50', 0):>9.0f} {ps.get('p99', 0):>9.0f}")
    for check in summary["checks"]:
        lines.append(f"{'met    ' if check['met'] else 'NOT MET'} {check['target']}: {check['value']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one short run of each")
    p.add_argument("--runs", type=int, help="repetitions, medians reported (default 3, quick 1)")
    p.add_argument("--duration", type=float, help="seconds of publishing per run (default 2, quick 0.3)")
    p.add_argument("--subscribers", default="100,1000", help="comma-separated S (default 100,1000)")
    p.add_argument("--max-messages", type=int, default=0, help="cap on publishes per run (for tests)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.subscribers = [int(s) for s in args.subscribers.split(",")]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    name = "cluster-quick" if args.quick else "cluster"
    log = args.results_dir / f"{name}-coremq.log"
    redis = RedisProcess()
    processes: list[Any] = []
    try:
        embedded = NodeProcess(None, "embedded", log).start()
        processes.append(embedded)
        one = NodeProcess(redis.url, "solo", log).start()
        processes.append(one)
        first, second = NodeProcess(redis.url, "n1", log).start(), None
        processes.append(first)
        second = NodeProcess(redis.url, "n2", log).start()
        processes.append(second)
        version = probe_coremq(embedded.port)
        targets = {"embedded": nodes_target(CoreMQWire(), [embedded], version),
                   "one node": nodes_target(CoreMQWire(), [one], version),
                   "two nodes": nodes_target(CoreMQWire(), [first, second], version),
                   "redis": nodes_target(WIRES["redis"](), [redis])}
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            results = runner.run(_measure(targets, args))
    finally:
        for process in processes:
            process.stop()
        redis.stop()
    summary = summarize(results)
    output = {"meta": {"command": "python -m bench cluster " + " ".join(sys.argv[2:] if argv is None else argv),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                       "subscribers": args.subscribers, "note": "one node, and the two nodes, share the machine's "
                       "CPUs with the Redis server and the load generator"},
              "runs": results, "summary": summary}
    path = args.results_dir / f"{name}.json"
    path.write_text(json.dumps(output, indent=1))
    print(render(summary))
    print(f"\nwritten: {path}")
    if summary["failures"]:
        print("BENCHMARK FAILED: " + "; ".join(summary["failures"]), file=sys.stderr)
        return 1
    return 0
