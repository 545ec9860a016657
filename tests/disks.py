"""Real small and read-only disks for the durable history's error tests: tmpfs mounts (we run as root).

Import it as ``from disks import mounted_tmpfs, fill`` (tests/ is on sys.path).
A test that needs a disk fails, never skips, when it cannot mount one: a
skipped test would hide the feature it checks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["mounted_tmpfs", "remount", "fill"]


def _mount_command() -> list[str]:
    return ["mount"] if os.geteuid() == 0 else ["sudo", "-n", "mount"]


@contextlib.contextmanager
def mounted_tmpfs(directory: Path, *, size: str = "2m", read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``directory`` (created), read-only if asked; unmounted afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run([*_mount_command(), "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs on {directory} (these tests need root or passwordless sudo): "
                    f"{done.stderr.strip()}")
    try:
        yield directory
    finally:
        # Lazily: a broker thread that a failed test left behind may still hold a file open.
        subprocess.run([*_mount_command()[:-1], "umount", "-l", str(directory)], check=True)


def remount(directory: Path, *, read_only: bool) -> None:
    """Make the tmpfs on ``directory`` read-only or writable again."""
    subprocess.run([*_mount_command(), "-o", "remount,ro" if read_only else "remount,rw", str(directory)],
                   check=True)


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system is full; return the file (delete it to free the space)."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        for size in (65536, 4096, 1):
            while True:
                try:
                    out.write(chunk[:size])
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return filler
