"""Summaries of the raw runs: medians, ratios against each peer, the issue's targets, output.

Everything here works on the plain-dict results that :mod:`bench.suite`
collects (the same dicts that are written as JSON), so a saved JSON file can
be re-rendered with :func:`render_table` and :func:`write_chart`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .measure import median

__all__ = ["summarise_fanout", "summarise_latency", "summarise_conns", "check_targets", "render_table",
           "write_chart", "LABELS"]

LABELS = {"coremq": "CoreMQ", "redis": "Redis", "mqtt": "Mosquitto", "nats": "NATS"}
KIB = 1024
#: The issue's targets for the TCP broker, against peers measured in the same run.
MAX_P99_VS_REDIS = 2.0
MIN_FANOUT_VS_REDIS = 0.5
MAX_BYTES_PER_CONN = 10 * KIB


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _undisturbed(good: list[dict], cell: dict[str, Any]) -> list[dict]:
    """The runs a median is taken of: those no other process disturbed, if there are any.

    Other processes only ever slow a run down, so a disturbed run is not a
    sample of the same thing. If every run was disturbed, all are used and
    the cell says so (``"disturbed": true``, shown as ``*``).
    """
    clean = [r for r in good if not r.get("noisy")]
    cell["noisy_runs"] = len(good) - len(clean)
    cell["disturbed"] = not clean
    return clean or good


def summarise_fanout(runs: list[dict]) -> dict[str, Any]:
    """Median rate and CPU shares per target and S; CoreMQ ÷ each peer per S."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["target"], run["subscribers"]), []).append(run)
    table: dict[str, dict[str, dict]] = {}
    for (target, subs), items in sorted(groups.items()):
        good = [r for r in items if r["verified"] and not r["error"]]
        failed = [r["error"] for r in items if r["error"] or not r["verified"]]
        cell: dict[str, Any] = {"runs": len(items), "failures": failed}
        if good and not failed:
            used = _undisturbed(good, cell)
            cell["rate"] = median([r["rate"] for r in used])
            cell["rates"] = [round(r["rate"]) for r in good]
            for part in ("server", "generator", "generator_sys", "other"):
                cell[part] = median([r["cpu"].get(part, math.nan) for r in used if r["cpu"]])
        table.setdefault(target, {})[str(subs)] = cell
    ratios: dict[str, dict[str, float | None]] = {}
    for peer, cells in table.items():
        if peer == "coremq":
            continue
        ratios[peer] = {s: _ratio(table.get("coremq", {}).get(s, {}).get("rate"), cell.get("rate"))
                        for s, cell in cells.items()}
    return {"median": table, "ratios": ratios}


def summarise_latency(runs: list[dict]) -> dict[str, Any]:
    """Median of each percentile per target and mode; CoreMQ ÷ each peer."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["mode"], run["target"]), []).append(run)
    table: dict[str, dict[str, dict]] = {}
    for (mode, target), items in sorted(groups.items()):
        good = [r for r in items if r["verified"] and not r["error"]]
        failed = [r["error"] for r in items if r["error"] or not r["verified"]]
        cell: dict[str, Any] = {"runs": len(items), "failures": failed}
        if good and not failed:
            used = _undisturbed(good, cell)
            for key in good[0]["percentiles_us"]:
                cell[key] = median([r["percentiles_us"][key] for r in used])
            cell["samples"] = sum(r["samples"] for r in used)
            cell["rate"] = median([r["rate"] for r in used])
            for part in ("server", "generator", "other"):
                cell[part] = median([r["cpu"][part] for r in used if r["cpu"]])
        table.setdefault(mode, {})[target] = cell
    ratios = {mode: {peer: {k: _ratio(cells.get("coremq", {}).get(k), cell.get(k)) for k in ("p50", "p99")}
                     for peer, cell in cells.items() if peer != "coremq"} for mode, cells in table.items()}
    return {"median": table, "ratios": ratios}


def _cost(run: dict) -> tuple[float, str]:
    """Bytes per connection to compare: RSS growth, unless the server's own heap shows it reused memory."""
    rss, heap = run["bytes_per_connection"], run.get("heap_per_connection")
    if heap is not None and heap > 0 and not rss >= heap / 2:
        return heap, "heap"
    return rss, "rss"


def summarise_conns(runs: list[dict]) -> dict[str, Any]:
    """Per target its run and the cost used for ratios (``"cost"``, ``"cost_from"``: rss or heap)."""
    table = {r["target"]: {**r, "cost": _cost(r)[0], "cost_from": _cost(r)[1]} for r in runs}
    core = table.get("coremq", {}).get("cost")
    return {"results": table, "ratios": {t: _ratio(core, r["cost"]) for t, r in table.items() if t != "coremq"}}


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets for CoreMQ, each ``{"target", "status": PASS|FAIL|n/a, "detail"}``."""
    checks: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        checks.append({"target": name, "status": "n/a" if ok is None else ("PASS" if ok else "FAIL"),
                       "detail": detail})

    fanout = results.get("fanout")
    if fanout:
        ratios = fanout["summary"]["ratios"]
        for s in fanout["summary"]["median"].get("coremq", {}):
            r = ratios.get("mqtt", {}).get(s)
            add(f"fan-out S={s} >= Mosquitto", None if r is None else r >= 1.0,
                "no Mosquitto result" if r is None else f"CoreMQ/Mosquitto = {r:.2f}")
            if int(s) >= 10:
                r = ratios.get("redis", {}).get(s)
                add(f"fan-out S={s} >= 1/2 Redis", None if r is None else r >= MIN_FANOUT_VS_REDIS,
                    "no Redis result" if r is None else f"CoreMQ/Redis = {r:.2f}")
    latency = results.get("latency")
    if latency:
        for mode, peers in latency["summary"]["ratios"].items():
            r = peers.get("redis", {}).get("p99")
            add(f"latency p99 ({mode}) <= 2x Redis", None if r is None else r <= MAX_P99_VS_REDIS,
                "no Redis result" if r is None else f"CoreMQ/Redis = {r:.2f}")
    conns = results.get("conns")
    if conns:
        core = conns["summary"]["results"].get("coremq")
        if core:
            per = core["bytes_per_connection"]
            ok = None if core["requested"] < 10_000 else (core["held"] >= 10_000 and per <= MAX_BYTES_PER_CONN)
            add("idle connection <= 10 KiB, 10,000 held", ok,
                f"{per / KIB:.2f} KiB each, {core['held']:,} of {core['requested']:,} held"
                + (" (the target needs --conns 10000)" if ok is None else ""))
    return checks


def _rate(value: float | None, disturbed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "FAIL"
    mark = "*" if disturbed else ""
    return (f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k") + mark


def _num(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def render_table(results: dict[str, Any]) -> str:
    """The human-readable report: one table per benchmark, then the targets."""
    meta = results["meta"]
    targets = [t for t in ("coremq", "redis", "mqtt", "nats") if t in meta["targets"]]
    peers = [t for t in targets if t != "coremq"]
    lines = [f"CoreMQ benchmarks, {meta['started']} on {meta['cpus']} CPUs ({meta['machine']})",
             "  " + "; ".join(f"{LABELS[t]} {meta['targets'][t]['version']}" for t in targets),
             f"  CoreMQ served by: {meta['coremq_mode']}; load generator: {meta['generator']}"]
    if meta.get("noisy_runs_kept") or meta.get("waited_for_quiet"):
        lines.append(f"  shared machine: waited {meta.get('waited_for_quiet', 0):g}s for quiet, repeated disturbed runs "
                     f"for {meta.get('repeated_noisy_seconds', 0):g}s; {meta.get('noisy_runs_kept', 0)} run(s) kept "
                     "although other processes used over 0.35 cores (\"noisy\" in the JSON)")
    fanout = results.get("fanout")
    if fanout:
        s = fanout["settings"]
        summary = fanout["summary"]
        lines += ["", f"Fan-out: delivered messages/s, 1 publisher, S subscribers, {s['payload']}-byte payloads, "
                      f"median of {s['runs']} runs of {s['duration']:g}s, every message verified",
                  "  (medians of the runs no other process disturbed; * = every run was disturbed)"]
        head = f"{'S':>6} " + "".join(f"{LABELS[t]:>11}" for t in targets)
        head += "  | " + "".join(f"{'÷' + LABELS[p][:5]:>9}" for p in peers)
        lines.append(head)
        for subs in s["subscribers"]:
            cells = [summary["median"].get(t, {}).get(str(subs), {}) for t in targets]
            row = f"{subs:>6} " + "".join(f"{_rate(c.get('rate'), c.get('disturbed', False)):>11}" for c in cells)
            row += "  | " + "".join(f"{_num(summary['ratios'].get(p, {}).get(str(subs))):>9}" for p in peers)
            lines.append(row)
        lines += ["", "  CPU during fan-out, in cores: server / load generator (of it in the kernel) / everything else"]
        lines.append(f"{'S':>6} " + "".join(f"{LABELS[t]:>28}" for t in targets))
        for subs in s["subscribers"]:
            cells = []
            for t in targets:
                c = summary["median"].get(t, {}).get(str(subs), {})
                cells.append(f"{_num(c.get('server'))} / {_num(c.get('generator'))} ({_num(c.get('generator_sys'))}) / "
                             f"{_num(c.get('other'))}" if "server" in c else "-")
            lines.append(f"{subs:>6} " + "".join(f"{c:>28}" for c in cells))
    latency = results.get("latency")
    if latency:
        s = latency["settings"]
        summary = latency["summary"]
        lines += ["", f"Latency, µs from publish to delivery, 1 publisher and 1 subscriber, median of {s['runs']} runs"]
        lines.append(f"{'mode':<22}{'target':<11}{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'samples':>9}"
                     f"{'cpu srv/gen':>13}")
        for mode, title in (("inflight", "one in flight"), ("steady", f"steady {s['rate']:,}/s")):
            for t in targets:
                c = summary["median"].get(mode, {}).get(t)
                if c is None:
                    continue
                if "p50" not in c:
                    lines.append(f"{title:<22}{LABELS[t]:<11}  FAIL: {c['failures'][0] if c['failures'] else ''}")
                    continue
                lines.append(f"{title:<22}{LABELS[t]:<11}" + "".join(f"{c[k]:>8.0f}" for k in
                             ("p50", "p90", "p99", "p99.9")) + f"{c['samples']:>9,}"
                             + f"{_num(c.get('server')) + '/' + _num(c.get('generator')):>13}"
                             + (" *" if c.get("disturbed") else ""))
            ratios = summary["ratios"].get(mode, {})
            if ratios:
                lines.append(f"{'':<22}{'CoreMQ ÷':<11}" + "  ".join(
                    f"{LABELS[p]} p50 {_num(r['p50'])} p99 {_num(r['p99'])}" for p, r in ratios.items()))
    conns = results.get("conns")
    if conns:
        lines += ["", f"Idle connections: {conns['settings']['count']:,} opened and set up, server RSS growth"]
        lines.append(f"{'target':<11}{'held':>8}{'KiB each':>10}{'RSS before':>12}{'RSS held':>11}{'CoreMQ ÷':>10}"
                     f"{'heap KiB each':>15}")
        for t in targets:
            r = conns["summary"]["results"].get(t)
            if r is None:
                continue
            ratio = conns["summary"]["ratios"].get(t)
            heap = r.get("heap_per_connection")
            ratio_text = _num(ratio) + ("h" if r.get("cost_from") == "heap" else "")
            lines.append(f"{LABELS[t]:<11}{r['held']:>8,}{_num(r['bytes_per_connection'] / KIB):>10}"
                         f"{r['rss_before'] / 2**20:>10.1f}MB{r['rss_held'] / 2**20:>9.1f}MB{ratio_text:>10}"
                         f"{_num(None if heap is None else heap / KIB):>15}"
                         + (f"  ({r['refused']:,} refused: {r['first_refusal']})" if r["refused"] else ""))
        lines.append("  KiB each: RSS growth ÷ held (the issue's measure; a server that held many connections "
                     "before reuses freed memory and grows less);")
        lines.append("  heap KiB each: the server's own count of allocated bytes, where it reports one "
                     "(Redis used_memory, Mosquitto $SYS heap);")
        lines.append("  CoreMQ ÷: against RSS growth, or against the heap (h) where RSS grew by less than half "
                     "of it (memory reused)")
    checks = results.get("checks") or []
    if checks:
        lines += ["", "Issue 7 targets for CoreMQ (ratios from this run):"]
        lines += [f"  {c['status']:<5} {c['target']:<36} {c['detail']}" for c in checks]
    failures = results.get("failures") or []
    if failures:
        lines += ["", "FAILED RUNS (lost, reordered or unverified messages, or errors):"]
        lines += [f"  {f}" for f in failures]
    return "\n".join(lines)


def write_chart(results: dict[str, Any], path: Path) -> None:
    """A PNG with one panel per benchmark that ran."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = [t for t in ("coremq", "redis", "mqtt", "nats") if t in results["meta"]["targets"]]
    colors = {"coremq": "#2b7bba", "redis": "#d62728", "mqtt": "#7f7f7f", "nats": "#2ca02c"}
    panels = [k for k in ("fanout", "latency", "conns") if results.get(k)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.5), squeeze=False)
    width = 0.8 / max(1, len(targets))
    for ax, panel in zip(axes[0], panels):
        if panel == "fanout":
            subs = results["fanout"]["settings"]["subscribers"]
            median = results["fanout"]["summary"]["median"]
            for i, t in enumerate(targets):
                values = [median.get(t, {}).get(str(s), {}).get("rate") or 0 for s in subs]
                ax.bar([x + i * width for x in range(len(subs))], values, width, label=LABELS[t], color=colors[t])
            ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(subs))], [f"S={s}" for s in subs])
            ax.set_yscale("log")
            ax.set_ylabel("delivered messages/s (log scale)")
            ax.set_title("Fan-out, 1 publisher")
        elif panel == "latency":
            median = results["latency"]["summary"]["median"]
            groups = [(m, q) for m in ("inflight", "steady") for q in ("p50", "p99") if m in median]
            for i, t in enumerate(targets):
                values = [median[m].get(t, {}).get(q) or 0 for m, q in groups]
                ax.bar([x + i * width for x in range(len(groups))], values, width, label=LABELS[t], color=colors[t])
            ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(groups))],
                          [f"{q}\n{'1 in flight' if m == 'inflight' else 'steady'}" for m, q in groups])
            ax.set_yscale("log")
            ax.set_ylabel("µs (log scale)")
            ax.set_title("Latency, publish to delivery")
        else:
            res = results["conns"]["summary"]["results"]
            shown = [t for t in targets if t in res]
            ax.bar([LABELS[t] + (" (heap)" if res[t].get("cost_from") == "heap" else "") for t in shown],
                   [res[t].get("cost", res[t]["bytes_per_connection"]) / KIB for t in shown],
                   color=[colors[t] for t in shown])
            ax.axhline(MAX_BYTES_PER_CONN / KIB, color="black", linestyle=":", linewidth=1, label="target 10 KiB")
            ax.set_ylabel("KiB per idle connection")
            ax.set_title(f"{results['conns']['settings']['count']:,} idle connections")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"CoreMQ vs peers, {results['meta']['started']}, {results['meta']['cpus']} CPUs", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
