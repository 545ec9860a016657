"""coremq_broker.start() called at the top of a script, without the ``__main__`` guard the README shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_unguarded_script_is_told_about_the_main_guard(tmp_path: Path) -> None:
    """start() at a script's top level fails with an OSError that names `if __name__ == "__main__":`."""
    script = tmp_path / "unguarded.py"
    script.write_text("from coremq_broker import start\n"
                      "with start(port=0, log_level='WARNING') as broker:\n"
                      "    print('listening', broker.port)\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "listening" not in result.stdout
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("OSError: the broker process ended"), result.stderr
    assert 'A script must call start() under `if __name__ == "__main__":`' in last_line
