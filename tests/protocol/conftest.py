"""Fixtures of the protocol tests: the project's run_coremq (broker and web side) on free ports."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from project_servers import started_servers  # noqa: E402


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """``(tcp_port, web_port)`` of one ``run_coremq`` for the module's tests."""
    with started_servers(Path(tmp_path_factory.mktemp("protocol"))) as running:
        yield running
