"""Fixtures for the store: a real memcached and the CoreMQ store server, side by side."""

from __future__ import annotations

import os
import sys
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from memcached_peers import MEMCACHED, RealMemcached, StoreServerThread  # noqa: E402


@pytest.fixture
def memcached() -> Iterator[RealMemcached]:
    """A fresh real memcached 1.6 on a free port (installed by .ci/run)."""
    if not os.path.exists(MEMCACHED):
        pytest.fail(f"{MEMCACHED} is missing: apt-get install memcached (.ci/run does)")
    server = RealMemcached()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store_server() -> Iterator[StoreServerThread]:
    """A fresh CoreMQ store served over the memcached protocol on a free port."""
    server = StoreServerThread()
    try:
        yield server
    finally:
        server.stop()
