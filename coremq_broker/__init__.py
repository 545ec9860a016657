"""CoreMQ's broker, and the Django app that configures and runs it.

Importing this package is cheap and needs no Django settings: the names below
are loaded on first use, so ``from coremq_broker import start`` works in a plain
script. ``start`` runs a broker in its own process; ``publish``/``apublish``
send a message from Django code through a per-process client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["start", "BrokerProcess", "publish", "apublish"]

_LAZY = {
    "start": "coremq_broker.process",
    "BrokerProcess": "coremq_broker.process",
    "publish": "coremq_broker.publishing",
    "apublish": "coremq_broker.publishing",
}

if TYPE_CHECKING:  # pragma: no cover
    from .process import BrokerProcess, start
    from .publishing import apublish, publish


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
