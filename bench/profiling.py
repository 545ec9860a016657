"""Where the CoreMQ broker spends its time during a benchmark.

Two profilers, both optional:

- ``py-spy`` (``pip install py-spy``) samples the running broker from outside,
  so the broker runs at full speed and exactly as ``run_coremq`` serves it.
  :class:`PySpy` attaches to the broker's pid and :func:`top_frames`
  summarises its raw (collapsed-stack) output.
- ``cProfile``: the broker runs under :mod:`bench.serve` ``--cprofile`` (slower
  by its overhead, but needs nothing installed); :func:`cprofile_top` prints
  the top functions of the stats file it leaves.
"""

from __future__ import annotations

import io
import pstats
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["PySpy", "top_frames", "cprofile_top", "find_py_spy"]


def find_py_spy() -> str | None:
    """The py-spy executable beside this Python, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpy:
    """``py-spy record`` attached to ``pid`` until :meth:`stop`; raw output to ``path``."""

    def __init__(self, pid: int, path: Path, *, rate: int = 250) -> None:
        exe = find_py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.path = path
        self.process = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--output", str(path),
             "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> str:
        """Stop sampling (SIGINT makes py-spy write its output) and return its summary."""
        self.process.send_signal(signal.SIGINT)
        try:
            _, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err.decode(errors="replace")


def top_frames(raw: Path, limit: int = 20) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        raw_frames = stack.split(";")
        frames = [_short(f) for f in raw_frames]
        own[frames[-1]] += n
        lines[_short(raw_frames[-1], line=True)] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "(no samples)"
    out = [f"{total:,} samples; self% = time in the function itself, incl% = with what it calls", "",
           f"{'self%':>7} {'incl%':>7}  function"]
    for frame, n in own.most_common(limit):
        out.append(f"{100 * n / total:>7.1f} {100 * inclusive[frame] / total:>7.1f}  {frame}")
    out += ["", "hottest lines (self):", f"{'self%':>7}  line"]
    for line, n in lines.most_common(limit // 2):
        out.append(f"{100 * n / total:>7.1f}  {line}")
    out += ["", "heaviest by inclusive time:", f"{'incl%':>7}  function"]
    for frame, n in inclusive.most_common(limit):
        out.append(f"{100 * n / total:>7.1f}  {frame}")
    return "\n".join(out)


def _short(frame: str, *, line: bool = False) -> str:
    """``func (path/to/pkg/module.py:12)`` -> ``func (pkg/module.py)``, or ``...module.py:12`` with ``line``."""
    name, _, where = frame.partition(" (")
    path, _, number = where.rstrip(")").rpartition(":")
    parts = Path(path).parts
    if not parts:
        return name
    return f"{name} ({'/'.join(parts[-2:])}{':' + number if line else ''})"


def cprofile_top(stats_file: Path, limit: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(stats_file), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(limit)
    return out.getvalue()
