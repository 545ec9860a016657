"""``python -m bench fanout|latency|conns|all [--compare redis,mqtt,nats] [--quick]``.

(``python -m bench websocket [--quick]`` is the WebSocket fan-out against Channels, Node ``ws`` and
``websockets``: :mod:`bench.websocket`; ``python -m bench layer`` the Channels layer on CoreMQ
against channels_redis: :mod:`bench.layer`; ``python -m bench store [--compare memcached]`` the store's
memcached protocol against memcached: :mod:`bench.store`.)

Starts the CoreMQ broker as ``run_coremq`` serves it, finds the peers that
answer on this machine, runs the benchmarks, prints a table with CoreMQ's
ratios against each peer, and writes ``bench/results/<name>.json`` and
``<name>.png``. Exits 1 if any run lost, reordered or could not verify a
message (or failed otherwise). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from .conns import ConnsSettings, raise_fd_limit
from .coremq_process import REPO, CoreMQProcess, resolve_mode
from .fanout import FanoutSettings
from .latency import LatencySettings
from .net import new_event_loop
from .profiling import PySpy, cprofile_top, top_frames
from .protocols import CoreMQWire
from .report import check_targets, render_table, write_chart
from .suite import Suite, SuiteSettings
from .targets import PEERS, Target, probe_coremq, probe_peer

__all__ = ["main", "parse_args", "settings_from_args"]

BENCHMARKS = ("fanout", "latency", "conns", "all")
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("benchmark", choices=BENCHMARKS)
    p.add_argument("--compare", default="", help="peers to compare with: redis,mqtt,nats or all (each only if "
                                                 "it answers on its standard port here)")
    p.add_argument("--quick", action="store_true", help="a short pass (under a minute): 1 run, small counts")
    p.add_argument("--runs", type=int, help="repetitions; medians are reported (default 3, quick 1)")
    p.add_argument("--subscribers", help="comma-separated S for fan-out (default 1,10,100,1000; quick 1,10,100)")
    p.add_argument("--duration", type=float, help="seconds of publishing per run (default 2, quick 0.3)")
    p.add_argument("--window", type=int, help="publishes in flight (default 1000)")
    p.add_argument("--max-messages", type=int, default=0, help="cap on publishes per run (for tests)")
    p.add_argument("--rate", type=int, help="messages/s for the steady latency test (default 10000, quick 2000)")
    p.add_argument("--conns", type=int, help="idle connections to hold (default 10000, quick 500)")
    p.add_argument("--broker", default="auto", choices=("auto", "command", "serve"),
                   help="how to run CoreMQ: manage.py run_coremq (command; auto when it exists) or bench.serve")
    p.add_argument("--profile", choices=("py-spy", "cprofile"),
                   help="profile the CoreMQ broker during fan-out (cprofile implies --broker serve)")
    p.add_argument("--quiet-wait", type=float, help="seconds to wait for a quiet machine before each run "
                                                    "(default 10, quick 2; 0: never wait)")
    p.add_argument("--quiet-budget", type=float,
                   help="seconds that waiting for quiet and repeating disturbed runs may add in all "
                        "(default 150, quick 10)")
    p.add_argument("--name", help="results file name (default: the benchmark, with -quick in quick mode)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--no-chart", action="store_true")
    return p.parse_args(argv)


def _pick(value: Any, normal: Any, quick: Any, is_quick: bool) -> Any:
    return value if value is not None else (quick if is_quick else normal)


def settings_from_args(args: argparse.Namespace) -> SuiteSettings:
    q = args.quick
    subs = tuple(int(s) for s in args.subscribers.split(",")) if args.subscribers else (
        (1, 10, 100) if q else (1, 10, 100, 1000))
    fanout = FanoutSettings(duration=_pick(args.duration, 2.0, 0.3, q), window=_pick(args.window, 1000, 1000, q),
                            max_messages=args.max_messages)
    latency = LatencySettings(duration=_pick(args.duration, 2.0, 0.3, q), rate=_pick(args.rate, 10_000, 2000, q),
                              max_messages=args.max_messages)
    conns = ConnsSettings(count=_pick(args.conns, 10_000, 500, q), settle=0.5 if q else 3.0, server_heap=not q)
    return SuiteSettings(runs=_pick(args.runs, 3, 1, q), subscribers=subs, fanout=fanout, latency=latency,
                         conns=conns, quiet_wait=_pick(args.quiet_wait, 10.0, 2.0, q), retries=0 if q else 1,
                         quiet_budget=_pick(args.quiet_budget, 150.0, 10.0, q))


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "coremq_broker",
                                "coremq_client"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+local changes" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _peers(compare: str, log: Any) -> list[Target]:
    names = list(PEERS) if compare.strip() == "all" else [n.strip() for n in compare.split(",") if n.strip()]
    found = []
    for name in names:
        if name not in PEERS:
            raise SystemExit(f"unknown peer {name!r}: choose from {', '.join(PEERS)}")
        target, why = probe_peer(name)
        if target is None:
            log(f"skipping {name}: {why}")
        else:
            found.append(target)
    return found


async def _scenario(kind: str, suite: Suite, peers: list[Target], args: argparse.Namespace,
                    meta: dict[str, Any], profile_notes: list[str]) -> dict[str, Any]:
    """Start a fresh CoreMQ broker, run one benchmark against it and the peers, stop it."""
    mode = "serve" if args.profile == "cprofile" and kind == "fanout" else args.broker
    stem = args.results_dir / args.name
    prof = stem.with_name(f"{args.name}-coremq.prof") if mode == "serve" and args.profile == "cprofile" else None
    with ExitStack() as stack:
        proc = stack.enter_context(CoreMQProcess(mode, log_path=stem.with_name(f"{args.name}-coremq.log"),
                                                 profile=prof))
        coremq = Target(CoreMQWire(), proc.port, proc.pid, probe_coremq(proc.port))
        meta["targets"]["coremq"] = {**coremq.describe(), "commit": _git_commit(), "mode": proc.mode}
        meta["coremq_mode"] = " ".join(Path(a).name if i < 2 else a for i, a in enumerate(proc.argv()))
        targets = [coremq, *peers]
        spy = None
        if kind == "fanout" and args.profile == "py-spy":
            spy = PySpy(proc.pid, stem.with_name(f"{args.name}-coremq-pyspy.txt"))
        try:
            return await getattr(suite, kind)(targets if kind != "fanout" or not spy else [coremq])
        finally:
            if spy is not None:
                spy.stop()
                profile_notes.append(top_frames(spy.path))
            proc.stop()
            if prof is not None and prof.exists():
                profile_notes.append(cprofile_top(prof))


async def _run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    settings = settings_from_args(args)
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731 - progress goes to stderr
    args.results_dir.mkdir(parents=True, exist_ok=True)
    args.name = args.name or (args.benchmark + ("-quick" if args.quick else ""))
    kinds = ["conns", "fanout", "latency"] if args.benchmark == "all" else [args.benchmark]
    (args.results_dir / f"{args.name}-coremq.log").unlink(missing_ok=True)  # the broker's log of this session
    if "conns" in kinds:
        limit = raise_fd_limit(settings.conns.count + 1024)
        if limit < settings.conns.count + 64:
            settings = replace(settings, conns=replace(settings.conns, count=limit - 64))
            log(f"open-file limit is {limit}: holding {settings.conns.count} connections")
    peers = _peers(args.compare, log)
    meta: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "machine": _cpu_model(),
        "python": platform.python_version(), "command": "python -m bench " + " ".join(sys.argv[1:]),
        "generator": f"1 process, {'uvloop' if _has_uvloop() else 'asyncio'}, Python {platform.python_version()}",
        "coremq_mode": resolve_mode(args.broker), "targets": {p.name: p.describe() for p in peers},
    }
    suite = Suite(settings, log=log)
    results: dict[str, Any] = {"meta": meta}
    profile_notes: list[str] = []
    for kind in kinds:
        log(f"{kind}: CoreMQ{''.join(', ' + p.label for p in peers)}")
        results[kind] = await _scenario(kind, suite, peers, args, meta, profile_notes)
    results["checks"] = check_targets(results)
    results["failures"] = suite.failures
    meta["seconds"] = round(time.monotonic() - start, 1)
    meta["waited_for_quiet"] = round(suite.waited, 1)
    meta["repeated_noisy_seconds"] = round(suite.repeated, 1)
    meta["noisy_runs_kept"] = suite.noisy_runs
    json_path = args.results_dir / f"{args.name}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    print(render_table(results))
    for note in profile_notes:
        print("\nCoreMQ broker profile during fan-out:\n" + note)
    written = [str(json_path)]
    if not args.no_chart:
        png = args.results_dir / f"{args.name}.png"
        write_chart(results, png)
        written.append(str(png))
    print(f"\nwritten: {', '.join(written)} ({meta['seconds']}s)")
    if suite.failures:
        print(f"\nBENCHMARK FAILED: {len(suite.failures)} run(s) did not deliver every message in order or failed; "
              "see FAILED RUNS above", file=sys.stderr)
        return 1
    return 0


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["websocket"]:  # browser-protocol fan-out against Channels, Node ws, websockets
        from .websocket import main as websocket_main

        return websocket_main(argv[1:])
    if argv[:1] == ["layer"]:  # the Channels layer on CoreMQ against channels_redis
        from .layer import main as layer_main

        return layer_main(argv[1:])
    if argv[:1] == ["cluster"]:  # one node against two on one Redis
        from .cluster import main as cluster_main

        return cluster_main(argv[1:])
    if argv[:1] == ["store"]:  # the store's memcached protocol against memcached
        from .store import main as store_main

        return store_main(argv[1:])
    args = parse_args(argv)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
