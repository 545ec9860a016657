"""CPU accounting for a measured window: the server's, the generator's, everyone else's.

Each is reported as a share of one core over the window (1.0 = one core
busy all the time; this machine has ``os.cpu_count()`` of them). "Other" is
the machine's busy time minus the server and the generator: if it is not near
zero, something else ran during the measurement and the numbers are suspect.
If the generator's share is near 1.0, the generator was the bottleneck.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import psutil

from .targets import Target

__all__ = ["CpuShare", "CpuMeter", "percentile", "median"]


@dataclass(frozen=True)
class CpuShare:
    """Cores used over a window: ``server`` (the target), ``generator`` (this process), ``other``.

    ``generator_sys`` is the part of ``generator`` spent in the kernel (mostly
    copying the received bytes out of the sockets).
    """

    seconds: float
    server: float
    generator: float
    other: float
    generator_sys: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"seconds": round(self.seconds, 4), "server": round(self.server, 3),
                "generator": round(self.generator, 3), "generator_sys": round(self.generator_sys, 3),
                "other": round(self.other, 3)}


def _own_cpu() -> tuple[float, float]:
    """``(user + system, system)`` seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuMeter:
    """``start()`` then ``stop()`` around a window; ``stop()`` returns the :class:`CpuShare`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._start: tuple[float, ...] | None = None

    def _sample(self) -> tuple[float, ...]:
        return (time.perf_counter(), self.target.cpu_seconds(), *_own_cpu(), _machine_busy())

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> CpuShare:
        assert self._start is not None
        end = self._sample()
        wall, server, own, own_sys, busy = (b - a for a, b in zip(self._start, end))
        wall = max(wall, 1e-9)
        return CpuShare(wall, server / wall, own / wall, max(0.0, busy - server - own) / wall, own_sys / wall)


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of an ascending list."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: list[float]) -> float:
    values = sorted(v for v in values if v == v)  # drop NaN
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
