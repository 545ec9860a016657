"""``start()``: a broker in a process of its own, as the 2015 CoreMQ offered.

The child is started with the ``spawn`` method, so it is safe to call from any
program (threads, an event loop, macOS); the parent resolves the configuration
and passes plain values, so the child needs no Django. The child reports the
port it really bound through a pipe, which makes ``port=0`` useful, and stops
gracefully (BYE to every client) on SIGTERM or SIGINT.

``start(redis="redis://...", node_name="n1")`` starts one node of several
sharing that Redis (docs/cluster.md); without ``redis`` the broker is the
embedded one, as before.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
from dataclasses import fields
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any

from .core.config import BrokerConfig

__all__ = ["BrokerProcess", "start"]


class BrokerProcess:
    """A handle on a broker running in a child process; a context manager that stops it."""

    def __init__(self, process: multiprocessing.process.BaseProcess, host: str, port: int) -> None:
        self.process = process
        self.host = host
        #: The port the broker bound (never 0).
        self.port = port

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for the process to end; return its exit code (None if still running)."""
        self.process.join(timeout)
        return self.process.exitcode

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (graceful: BYE, flush, close), wait ``timeout`` seconds, then kill; return the exit code."""
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, signal.SIGTERM)
            self.process.join(timeout)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        return self.process.exitcode

    def __enter__(self) -> "BrokerProcess":
        return self

    def __exit__(self, *exc_info: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else f"exited {self.exitcode}"
        return f"<BrokerProcess pid={self.pid} {self.host}:{self.port} {state}>"


def start(
    host: str | None = None,
    port: int | None = None,
    *,
    timeout: float = 10.0,
    daemon: bool = True,
    log_level: int | str = "INFO",
    redis: str | None = None,
    node_name: str | None = None,
    **options: Any,
) -> BrokerProcess:
    """Start a broker in a new process and return once it listens.

    ``host``, ``port`` and ``options`` (any :class:`BrokerConfig` field, plus
    ``encoder`` and ``decoder``: classes, callables or dotted paths) override
    the defaults, which come from ``settings.COREMQ`` when Django settings are
    configured and from :class:`BrokerConfig` otherwise. ``port=0`` picks a
    free port; the handle's ``port`` is the real one. A daemon broker ends
    with the process that started it. Raises ``OSError`` if the broker cannot
    bind and ``TimeoutError`` if it is not listening within ``timeout``.

    ``redis`` (a ``redis://`` or ``rediss://`` URL) makes the broker one node
    of the cluster on that Redis, named ``node_name`` (default ``<host>:<port>``,
    with port 0 ``<machine>-<pid>``); a Redis that does not answer raises
    ``OSError`` with the reason, and a bad URL or name ``ValueError``.
    """
    spec = _spec(_base_config(), host=host, port=port, **options)
    cluster = None
    if redis is not None:
        from .cluster.settings import parse_settings

        cluster = parse_settings(redis, node_name=node_name, host=spec["host"], port=spec["port"])
    elif node_name is not None:
        raise TypeError("node_name needs redis: the URL of the cluster's Redis")
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_child_main, args=(spec, sender, log_level, cluster), name="coremq-broker", daemon=daemon
    )
    try:
        process.start()
        sender.close()  # the child holds its own copy; EOF on ours then means the child died
        status, detail = _wait_until_ready(process, receiver, timeout)
    finally:
        sender.close()
        receiver.close()
    if status == "ready":
        return BrokerProcess(process, spec["host"], detail)
    if process.is_alive():
        process.kill()
    process.join()
    if status == "timeout":
        raise TimeoutError(detail)
    raise OSError(detail)


def _wait_until_ready(
    process: multiprocessing.process.BaseProcess, receiver: Connection, timeout: float
) -> tuple[str, Any]:
    """``("ready", port)`` from the child, else ``("error" | "timeout", why)``."""
    ready = wait([receiver, process.sentinel], timeout)
    if receiver in ready:
        try:
            return receiver.recv()
        except EOFError:
            pass
    if ready:
        process.join(1)  # the sentinel may be ready a moment before the exit code is known
        return "error", (f"the broker process ended (exit code {process.exitcode}) before it was listening; its log "
                         "says why. A script must call start() under `if __name__ == \"__main__\":` (the broker "
                         "process is spawned and imports the script again)")
    return "timeout", f"the broker was not listening within {timeout}s"


def _base_config() -> BrokerConfig:
    """``settings.COREMQ`` when Django settings are there, else the plain defaults."""
    try:
        from django.conf import settings
    except ImportError:  # pragma: no cover - Django is a requirement, but start() does not need it
        return BrokerConfig()
    if not (settings.configured or os.environ.get("DJANGO_SETTINGS_MODULE")):
        return BrokerConfig()
    from .conf import get_config

    return get_config()


def _spec(config: BrokerConfig, **overrides: Any) -> dict[str, Any]:
    """Picklable values that rebuild ``config`` with ``overrides`` in the child."""
    spec: dict[str, Any] = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "codec"}
    spec["encoder"] = config.codec.encoder
    spec["decoder"] = config.codec.decoder
    unknown = set(overrides) - set(spec)
    if unknown:
        raise TypeError(f"unknown broker option(s): {', '.join(sorted(unknown))}")
    spec.update({name: value for name, value in overrides.items() if value is not None})
    spec["encoder"] = _import(spec["encoder"])
    spec["decoder"] = _import(spec["decoder"])
    return spec


def _import(value: Any) -> Any:
    if isinstance(value, str):
        module, _, name = value.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return value


def _child_main(spec: dict[str, Any], ready: Connection, log_level: int | str, cluster: Any = None) -> None:
    """The child process: build the config, serve until a signal, report the port once bound.

    ``cluster`` (ClusterSettings, or None for the embedded engine) makes it a node of a cluster.
    """
    from coremq_client.codec import JSONCodec

    from .server import run

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = dict(spec)
    codec = JSONCodec(spec.pop("encoder"), spec.pop("decoder"))
    config = BrokerConfig(codec=codec, **spec)

    def announce(service: str, host: str, port: int) -> None:
        logging.getLogger("coremq.server").info("%s listening on %s:%d", service, host, port)
        ready.send(("ready", port))
        ready.close()

    options: dict[str, Any] = {}
    if cluster is not None:
        from .cluster.broker_engine import ClusterEngine

        engine = ClusterEngine(cluster, address=f"{config.host}:{config.port}")
        options["broker_options"] = {"engine": engine}

        def on_start(broker: Any) -> None:
            engine.serving_at(broker.address)

        options["on_start"] = on_start
    try:
        run(config, announce=announce, **options)
    except Exception as exc:
        logging.getLogger("coremq.server").error("broker failed: %s: %s", type(exc).__name__, exc)
        if not ready.closed:
            ready.send(("error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1) from exc
