"""The store's settings: one frozen dataclass, read by :mod:`coremq_broker.conf` from ``settings.COREMQ``.

``MEMCACHED_PORT`` and ``MEMCACHED_MEMORY`` (and the other fields, upper-cased)
are the keys; each default lives here only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["StoreConfig", "MEBIBYTE"]

MEBIBYTE = 2**20


@dataclass(frozen=True)
class StoreConfig:
    """Where ``run_coremq`` serves the memcached protocol and how much the store may hold."""

    #: The memcached text protocol's port, on the broker's ``HOST`` (memcached's own default).
    memcached_port: int = 11211
    #: Bytes the store may hold (keys, values and a fixed overhead per item, as ``memcached -m``).
    memcached_memory: int = 64 * MEBIBYTE
    #: The largest item (key, value and memcached's per-item overhead), as ``memcached -I``.
    memcached_max_item_size: int = MEBIBYTE
    #: Publish each change of key K to the queue ``<prefix>K`` when that queue exists (docs/store.md, Watch).
    memcached_watch: bool = True
    memcached_watch_prefix: str = "coremq.store."
    #: Connections the memcached listener holds at most (memcached's ``-c``); more are closed at once.
    memcached_max_connections: int = 1024

    def with_options(self, **options: Any) -> "StoreConfig":
        return replace(self, **options)
