"""An unwritable DURABLE_PATH is reported before the broker serves: `manage.py check` and `run_coremq`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from coremq_broker.checks import check_durable_path
from disks import mounted_tmpfs
from servers import ROOT, ServerProcess

HERE = Path(__file__).resolve().parent


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty read-only tmpfs (chmod does not stop root; a read-only mount does)."""
    with mounted_tmpfs(tmp_path / "ro", size="1m", read_only=True) as disk:
        yield disk


def test_check_reports_an_unwritable_path_with_id_and_hint(read_only_disk: Path, tmp_path: Path) -> None:
    """DURABLE_ALL with an unwritable DURABLE_PATH is coremq.E011; without DURABLE_ALL coremq.W002; writable: nothing."""
    path = str(read_only_disk / "history.sqlite3")
    with override_settings(COREMQ={"DURABLE_PATH": path, "DURABLE_ALL": True}):
        (error,) = check_durable_path()
        assert error.id == "coremq.E011" and error.is_serious() and "Read-only file system" in error.msg
        assert "DURABLE_PATH" in error.hint
        with pytest.raises(SystemCheckError, match="coremq.E011"):
            call_command("check")
    with override_settings(COREMQ={"DURABLE_PATH": path}):
        (warning,) = check_durable_path()
        assert warning.id == "coremq.W002" and not warning.is_serious() and warning.hint
    with override_settings(COREMQ={"DURABLE_PATH": str(tmp_path / "missing" / "history.sqlite3"), "DURABLE_ALL": True}):
        (error,) = check_durable_path()
        assert error.id == "coremq.E011" and "does not exist" in error.msg
    with override_settings(COREMQ={"DURABLE_PATH": str(tmp_path / "history.sqlite3"), "DURABLE_ALL": True}):
        assert check_durable_path() == []


def command(database: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``manage.py <args>`` with the durability tests' settings, run to completion."""
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=command_env(database, **env),
                          capture_output=True, text=True, timeout=120)


def command_env(database: Path, **env: str) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "durable_settings", "COREMQ_DATABASE": str(database),
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), str(HERE.parent)]), "PYTHONUNBUFFERED": "1",
            **env}


def test_run_coremq_refuses_an_unwritable_path_with_durable_all(read_only_disk: Path, tmp_path: Path) -> None:
    """run_coremq with DURABLE_ALL and a read-only DURABLE_PATH exits non-zero naming coremq.E011 and the reason."""
    done = command(tmp_path / "db.sqlite3", "run_coremq", "--no-web", "--port", "0",
                   COREMQ_DURABLE_ALL="1", COREMQ_DURABLE_PATH=str(read_only_disk / "history.sqlite3"))
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "coremq.E011" in output and "Read-only file system" in output
    assert "listening" not in output


def test_run_coremq_refuses_an_unwritable_path_for_durable_queues_of_the_admin(read_only_disk: Path,
                                                                                 tmp_path: Path) -> None:
    """A queue made durable in the admin and a read-only DURABLE_PATH: run_coremq refuses to start and says why."""
    database = tmp_path / "db.sqlite3"
    assert command(database, "migrate", "--noinput").returncode == 0
    created = command(database, "shell", "-c", "from coremq_broker.models import QueueSetting; "
                                               "QueueSetting.objects.create(pattern='orders.*', durable=True)")
    assert created.returncode == 0, created.stderr
    done = command(database, "run_coremq", "--no-web", "--port", "0",
                   COREMQ_DURABLE_PATH=str(read_only_disk / "history.sqlite3"))
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "listening" not in output
    assert "durable history unavailable" in output and "orders.*" in output and "Read-only file system" in output


def test_run_coremq_without_durable_queues_starts_and_warns(read_only_disk: Path, tmp_path: Path) -> None:
    """No durable queue configured: run_coremq serves, and the warning coremq.W002 names the unwritable path."""
    server = ServerProcess([sys.executable, "manage.py", "run_coremq", "--no-web", "--port", "0"],
                           command_env(tmp_path / "db.sqlite3",
                                       COREMQ_DURABLE_PATH=str(read_only_disk / "history.sqlite3")))
    try:
        server.wait_for("CoreMQ broker listening on")
        output = "".join(server.output)
        assert "coremq.W002" in output and "Read-only file system" in output
    finally:
        server.stop()
