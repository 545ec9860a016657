"""``python -m bench.serve``: the broker with ``BrokerConfig()`` defaults, without Django.

The fallback for ``--broker serve`` (and for profiling with ``--cprofile``).
It serves through :func:`coremq_broker.server.run` when that exists, which is
what ``run_coremq --no-web`` does (uvloop, SIGTERM closes gracefully), and
prints the same ``CoreMQ broker listening on HOST:PORT`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import signal
import sys
from typing import Sequence

from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig

__all__ = ["main"]


def _announce(service: str, host: str, port: int) -> None:
    if service == "broker":
        print(f"CoreMQ broker listening on {host}:{port} (TCP)", flush=True)


def _serve(config: BrokerConfig) -> None:
    try:
        from coremq_broker.server import run
    except ImportError:  # an older tree: the same thing, spelled out
        run = None
    if run is not None:
        run(config, announce=_announce)
        return

    async def serve() -> None:
        broker = Broker(config)
        await broker.start()
        _announce("broker", broker.host, broker.port)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(broker.close()))
        await broker.serve_forever()

    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cprofile", metavar="FILE", help="write cProfile stats of the whole run to FILE")
    args = parser.parse_args(argv)
    config = BrokerConfig(host=args.host, port=args.port)
    if args.cprofile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            _serve(config)
        finally:
            profiler.disable()
            profiler.dump_stats(args.cprofile)
    else:
        _serve(config)
    sys.exit(0)


if __name__ == "__main__":
    main()
