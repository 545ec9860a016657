"""Run a broker until SIGINT or SIGTERM, alone or beside the web app under daphne.

:func:`run` is what ``manage.py run_coremq`` and :func:`coremq_broker.start`
call. Either way shutdown goes in the broker's fixed order (stop accepting, BYE
to every client, flush within ``shutdown_timeout``, close) and ``run`` returns
normally, so the process exits 0.

- Without web: a plain asyncio loop (uvloop when installed) runs the broker.
- With web: daphne's Twisted reactor runs on an asyncio loop (importing
  ``daphne.server`` installs it); the broker is started on that same loop, so
  ASGI code (the WebSocket bridge, the status page) reaches the live
  ``broker.registry`` in-process. Twisted handles the signals and, before it
  shuts down, waits for ``broker.close()``.

This is where the parts are put together: the core's :class:`Broker` gets its
TCP transport here (:func:`new_broker`); the core imports no transport.
Nothing here imports Django: the caller passes the ASGI application in.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass
from typing import Any, Callable

from .core.broker import Broker
from .core.config import BrokerConfig
from .transports.tcp import TcpConnection

__all__ = ["WebServer", "Announce", "OnStart", "run", "serve", "new_broker", "new_event_loop"]

logger = logging.getLogger("coremq.server")

#: Called with ``(service, host, port)`` once a listener is bound: ``"broker"`` or ``"web"``.
Announce = Callable[[str, str, int], None]

#: Called with the started broker, on the loop's thread (it must not block); may
#: return a function to call once the broker has closed. ``run_coremq`` starts
#: the per-queue settings watcher with it.
OnStart = Callable[[Broker], "Callable[[], None] | None"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class WebServer:
    """The ASGI application to serve with daphne, and where (port 0 picks a free one)."""

    application: Any
    host: str
    port: int
    verbosity: int = 1


def run(config: BrokerConfig, *, web: WebServer | None = None, announce: Announce | None = None,
        broker_options: dict[str, Any] | None = None, on_start: OnStart | None = None) -> None:
    """Serve ``config``'s broker (and ``web``) until SIGINT/SIGTERM; raise OSError if a bind fails.

    ``broker_options`` are passed to :class:`Broker` (``queue_settings``, ``access``, ``ssl``).
    """
    announce = announce or _log_announce
    settle_garbage_collector()
    if web is None:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(serve(config, announce=announce, broker_options=broker_options, on_start=on_start))
    else:
        _run_with_daphne(config, web, announce, broker_options or {}, on_start)


def new_broker(config: BrokerConfig, **options: Any) -> Broker:
    """A broker of ``config`` that serves TCP clients (``options`` as for :class:`Broker`)."""
    return Broker(config, **{"transport": TcpConnection, **options})


def settle_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the message path.

    Messages are dicts, and dicts are tracked: with the default thresholds a
    collection runs every few hundred messages, and a full one walks every
    object Django and the app loaded (hundreds of thousands), which shows as
    milliseconds in latency tails. Everything loaded so far is frozen out of
    the collector's reach, and young collections run ten times less often.
    Reference counting frees messages either way: they hold no cycles.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, 7000), middle, old)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop when uvloop is installed (and COREMQ_PURE_PYTHON unset), else asyncio's default loop."""
    from coremq_client.codec import PURE_PYTHON

    try:
        if PURE_PYTHON:
            raise ImportError("COREMQ_PURE_PYTHON is set")
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def serve(config: BrokerConfig, *, announce: Announce | None = None,
                broker_options: dict[str, Any] | None = None, on_start: OnStart | None = None) -> None:
    """Run a broker on the running loop until SIGINT or SIGTERM arrives, then close it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in _STOP_SIGNALS:
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    try:
        broker = new_broker(config, **(broker_options or {}))
        await broker.start()
        on_close = on_start(broker) if on_start is not None else None
        try:
            (announce or _log_announce)("broker", broker.host, broker.port)
            serving = asyncio.ensure_future(broker.serve_forever())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
        finally:
            await broker.close()
            if on_close is not None:
                on_close()
    finally:
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    logger.info("received %s; shutting down", signal.Signals(signum).name)
    stop.set()


def _log_announce(service: str, host: str, port: int) -> None:
    logger.info("%s listening on %s:%d", service, host, port)


def _run_with_daphne(config: BrokerConfig, web: WebServer, announce: Announce,
                     broker_options: dict[str, Any], on_start: OnStart | None) -> None:
    # Importing daphne.server installs Twisted's asyncio reactor on a loop of its own;
    # it must come before anything imports twisted.internet.reactor.
    import daphne.server  # noqa: F401  isort:skip
    from daphne.endpoints import build_endpoint_description_strings
    from twisted.internet import defer, reactor

    loop: asyncio.AbstractEventLoop = reactor._asyncioEventloop  # type: ignore[attr-defined]
    asyncio.set_event_loop(loop)
    broker = new_broker(config, **broker_options)
    loop.run_until_complete(broker.start())  # the reactor is not running yet: bind errors surface here
    on_close = on_start(broker) if on_start is not None else None
    announce("broker", broker.host, broker.port)
    shutting_down = False

    def close_broker() -> defer.Deferred:
        nonlocal shutting_down
        shutting_down = True
        logger.info("shutting down: closing the broker")
        return defer.Deferred.fromFuture(loop.create_task(broker.close()))

    def broker_finished(_: asyncio.Future) -> None:
        if not shutting_down and reactor.running:  # closed from inside: take the web server down too
            reactor.stop()

    serving = loop.create_task(broker.serve_forever())
    serving.add_done_callback(broker_finished)
    reactor.addSystemEventTrigger("before", "shutdown", close_broker)
    # Twisted only takes SIGINT over from Python's default handler; a server
    # started with SIGINT ignored (a background job) must still stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = _daphne_server(
        announce,
        application=web.application,
        endpoints=build_endpoint_description_strings(host=web.host, port=web.port),
        signal_handlers=True,
        action_logger=_access_log,
        verbosity=web.verbosity,
    )
    try:
        server.run()
    finally:
        if not serving.done():  # the reactor never ran its shutdown triggers
            loop.run_until_complete(broker.close())
        if on_close is not None:
            on_close()
    if server.listen_failure is not None:
        raise OSError(f"web server: {server.listen_failure}")


def _daphne_server(announce: Announce, **options: Any) -> Any:
    """daphne's ``Server`` that announces each bound address and remembers a failed bind."""
    from daphne.server import Server

    class AnnouncingServer(Server):
        listen_failure: str | None = None

        def listen_success(self, port: Any) -> None:
            super().listen_success(port)
            address = port.getHost()
            announce("web", address.host, address.port)

        def listen_error(self, failure: Any) -> None:
            self.listen_failure = failure.getErrorMessage()
            super().listen_error(failure)

    return AnnouncingServer(**options)


_access_logger = logging.getLogger("coremq.web")


def _access_log(protocol: str, action: str, details: dict[str, Any]) -> None:
    """daphne's action logger: one INFO line per HTTP request, like runserver."""
    if protocol == "http" and action == "complete":
        _access_logger.info('"%s %s" %s %s', details["method"], details["path"], details["status"], details["size"])
    elif protocol == "websocket":
        _access_logger.info("websocket %s %s", action.lower(), details.get("path", ""))
