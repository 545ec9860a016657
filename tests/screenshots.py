"""Where the browser tests save their screenshots.

A test run writes them to a temporary directory, removed when the run ends,
so ``make test`` leaves the tracked pictures alone. ``make screenshots`` sets
``COREMQ_SAVE_SCREENSHOTS=1`` and runs those tests again: then they write to
``docs/img/``, which the README and the docs show.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["DOCS_IMG", "screenshot_path"]

DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
_temporary: list[Path] = []


def screenshot_path(name: str) -> Path:
    """``docs/img/<name>`` under ``make screenshots``, else a file in this run's temporary directory."""
    if os.environ.get("COREMQ_SAVE_SCREENSHOTS"):
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        return DOCS_IMG / name
    if not _temporary:
        _temporary.append(Path(tempfile.mkdtemp(prefix="coremq-screenshots-")))
        atexit.register(shutil.rmtree, _temporary[0], True)
    return _temporary[0] / name
