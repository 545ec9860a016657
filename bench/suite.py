"""Running the benchmarks: which targets, in which order, how often, on a quiet machine.

Runs are interleaved (for each repetition, for each S, every target in
turn), so that CoreMQ and its peers see the same conditions and the ratios
come from one session. Before each run the machine must be quiet (less than
``quiet`` cores busy outside this harness, measured over half a second; the
harness waits up to ``quiet_wait`` seconds for that); a run during which
other processes used more than ``noise`` cores is repeated up to ``retries``
times and, if still disturbed, kept but flagged ``noisy``. Waiting and
repeating together may add at most ``quiet_budget`` seconds to the session,
so that a busy machine makes the numbers noisier (and says so), never the
session endless.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable

import psutil

from .conns import ConnsSettings, conns_run
from .fanout import FanoutSettings, fanout_run
from .latency import LatencySettings, latency_run
from .report import summarise_conns, summarise_fanout, summarise_latency
from .streams import PAYLOAD_SIZE
from .targets import Target

__all__ = ["SuiteSettings", "Suite"]


@dataclass(frozen=True)
class SuiteSettings:
    runs: int = 3
    subscribers: tuple[int, ...] = (1, 10, 100, 1000)
    fanout: FanoutSettings = field(default_factory=FanoutSettings)
    latency: LatencySettings = field(default_factory=LatencySettings)
    conns: ConnsSettings = field(default_factory=ConnsSettings)
    quiet: float = 0.3
    quiet_wait: float = 10.0
    noise: float = 0.35
    retries: int = 1
    quiet_budget: float = 150.0


def _busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class Suite:
    """Runs benchmarks against a list of targets and keeps the raw results."""

    def __init__(self, settings: SuiteSettings, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.log = log
        self.failures: list[str] = []
        self.waited = 0.0
        self.repeated = 0.0
        self.noisy_runs = 0

    async def wait_for_quiet(self) -> float:
        """Wait until other processes use less than ``quiet`` cores; return the load seen last.

        With ``quiet_wait`` 0 there is no waiting and no sampling (the load is reported as -1).
        """
        if self.settings.quiet_wait <= 0:
            return -1.0
        deadline = time.monotonic() + self.settings.quiet_wait
        while True:
            t0, b0 = time.perf_counter(), _busy()
            await asyncio.sleep(0.5)
            load = (_busy() - b0) / (time.perf_counter() - t0)
            if load < self.settings.quiet or time.monotonic() >= deadline or self.spent >= self.settings.quiet_budget:
                return load
            self.waited += 0.5

    @property
    def spent(self) -> float:
        """Seconds of the quiet budget used: waiting, and repeating disturbed runs."""
        return self.waited + self.repeated

    async def _measure(self, what: str, run: Callable[[], Awaitable[Any]]) -> dict:
        """One run on a quiet machine, repeated while others disturbed it."""
        for attempt in range(self.settings.retries + 1):
            load = await self.wait_for_quiet()
            started = time.monotonic()
            result = await run()
            data = result.as_dict()
            other = (data.get("cpu") or {}).get("other", 0.0)
            data["noisy"] = other > self.settings.noise
            data["attempt"] = attempt + 1
            data["load_before"] = round(load, 3)
            if (data.get("error") or not data["noisy"] or attempt == self.settings.retries
                    or self.spent >= self.settings.quiet_budget):
                break
            self.repeated += time.monotonic() - started
            self.log(f"    ({what}: other processes used {other:.2f} cores; repeating)")
        self.noisy_runs += bool(data["noisy"])
        if data.get("error"):
            self.failures.append(f"{what}: {data['error']}")
            self.log(f"    FAILED {what}: {data['error']}")
        return data

    async def fanout(self, targets: list[Target]) -> dict[str, Any]:
        s = self.settings
        warm = FanoutSettings(duration=min(0.3, s.fanout.duration), max_messages=s.fanout.max_messages)
        for target in targets:  # warm-up, not recorded unless it fails
            result = await fanout_run(target, min(10, max(s.subscribers)), warm)
            if result.error:
                self.failures.append(f"fan-out warm-up {target.label}: {result.error}")
        runs = []
        for repetition in range(s.runs):
            for subs in s.subscribers:
                for target in targets:
                    what = f"fan-out {target.label} S={subs} run {repetition + 1}"
                    data = await self._measure(what, lambda: fanout_run(target, subs, s.fanout))
                    data["run"] = repetition + 1
                    runs.append(data)
                    self.log(f"  {what}: {data['rate']:,.0f} msg/s"
                             f"{'' if data['verified'] else ' NOT VERIFIED'}{' (noisy)' if data['noisy'] else ''}")
        return {"settings": {**asdict(s.fanout), "runs": s.runs, "subscribers": list(s.subscribers),
                             "payload": PAYLOAD_SIZE},
                "runs": runs, "summary": summarise_fanout(runs)}

    async def latency(self, targets: list[Target]) -> dict[str, Any]:
        s = self.settings
        runs = []
        for repetition in range(s.runs):
            for mode in ("inflight", "steady"):
                for target in targets:
                    what = f"latency {mode} {target.label} run {repetition + 1}"
                    data = await self._measure(what, lambda: latency_run(target, mode, s.latency))
                    data["run"] = repetition + 1
                    runs.append(data)
                    p = data["percentiles_us"]
                    self.log(f"  {what}: p50 {p.get('p50', 0):.0f} µs, p99 {p.get('p99', 0):.0f} µs"
                             f"{' (noisy)' if data['noisy'] else ''}")
        return {"settings": {**asdict(s.latency), "runs": s.runs}, "runs": runs, "summary": summarise_latency(runs)}

    async def conns(self, targets: list[Target]) -> dict[str, Any]:
        s = self.settings
        runs = []
        for target in targets:
            await self.wait_for_quiet()
            result = await conns_run(target, s.conns)
            data = result.as_dict()
            runs.append(data)
            if data["error"]:
                self.failures.append(f"conns {target.label}: {data['error']}")
            self.log(f"  conns {target.label}: {data['held']:,} held, "
                     f"{data['bytes_per_connection'] / 1024:.2f} KiB each")
        return {"settings": asdict(s.conns), "runs": runs, "summary": summarise_conns(runs)}
