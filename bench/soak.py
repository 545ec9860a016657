"""Soak a broker: connection churn, steady publishes and slow readers for a chosen time.

    python -m bench.soak --minutes 5            # starts its own broker (same defaults as run_coremq)
    python -m bench.soak --port 6747 --pid N    # or soaks a running one

Every ``--interval`` seconds it prints the broker's resident memory, open file
descriptors and connections; at the end it compares the last third of the run
with the first and exits 1 if memory or descriptors kept growing. Traffic goes
to 127.0.0.1 only, and the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import psutil

from coremq_client.codec import FrameParser, encode_frame

SLOW_QUEUE = "soak.firehose"


async def open_client(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    reader, writer = await asyncio.open_connection(host, port)
    parser = FrameParser()
    while True:
        parser.receive_data(await reader.read(65536))
        events = parser.events()
        if events:
            queue, _body = events[0]  # the welcome, on the connection's own id queue
            return reader, writer, queue


def control(writer: asyncio.StreamWriter, own: str, request: dict) -> None:
    writer.write(encode_frame(own, json.dumps(request).encode()))


async def churner(host: str, port: int, stop: float, counts: dict[str, int]) -> None:
    """Connects, subscribes, publishes a little, drains, and leaves; again and again."""
    while time.monotonic() < stop:
        try:
            reader, writer, own = await open_client(host, port)
            control(writer, own, {"coremq_subscribe": [f"soak.room{random.randrange(20)}"]})
            for n in range(random.randrange(1, 20)):
                writer.write(encode_frame(f"soak.room{random.randrange(20)}", b'{"n":%d}' % n))
            await writer.drain()
            await asyncio.wait_for(reader.read(65536), 2)
            if random.random() < 0.3:
                writer.transport.abort()  # vanish without a goodbye
            else:
                writer.close()
            counts["churn"] += 1
        except (OSError, asyncio.TimeoutError):
            counts["errors"] += 1
            await asyncio.sleep(0.1)


async def publisher(host: str, port: int, stop: float, rate: int, counts: dict[str, int]) -> None:
    """Publishes ``rate`` messages a second to the firehose and the rooms, reading its replies."""
    reader, writer, own = await open_client(host, port)
    control(writer, own, {"coremq_options": {"reply": False}})

    async def drain_replies() -> None:
        while await reader.read(65536):
            pass

    draining = asyncio.ensure_future(drain_replies())
    payload = b'{"p":"' + b"x" * 1000 + b'"}'
    while time.monotonic() < stop:
        for _ in range(rate // 10):
            writer.write(encode_frame(SLOW_QUEUE, payload))
        await writer.drain()
        counts["published"] += rate // 10
        await asyncio.sleep(0.1)
    writer.close()
    draining.cancel()


async def slow_reader(host: str, port: int, stop: float, counts: dict[str, int]) -> None:
    """Subscribes to the firehose and reads nothing until it is cut off; then comes back."""
    while time.monotonic() < stop:
        try:
            reader, writer, own = await open_client(host, port)
            control(writer, own, {"coremq_subscribe": [SLOW_QUEUE]})
            await writer.drain()
            writer.transport.pause_reading()
            while time.monotonic() < stop and not writer.transport.is_closing():
                await asyncio.sleep(0.5)
                if random.random() < 0.05:
                    break
            writer.transport.abort()
            counts["slow"] += 1
        except OSError:
            counts["errors"] += 1
            await asyncio.sleep(0.1)


def sample(process: psutil.Process) -> tuple[float, int]:
    return process.memory_info().rss / 2**20, process.num_fds()


async def soak(host: str, port: int, process: psutil.Process, minutes: float, interval: float,
               churners: int, slow: int, rate: int) -> int:
    stop = time.monotonic() + minutes * 60
    counts = {"churn": 0, "published": 0, "slow": 0, "errors": 0}
    tasks = [asyncio.ensure_future(churner(host, port, stop, counts)) for _ in range(churners)]
    tasks += [asyncio.ensure_future(slow_reader(host, port, stop, counts)) for _ in range(slow)]
    tasks.append(asyncio.ensure_future(publisher(host, port, stop, rate, counts)))
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    print(f"{'t (s)':>7} {'RSS (MB)':>9} {'fds':>5} {'churned':>8} {'published':>10} {'slow cut':>9} {'errors':>7}")
    while time.monotonic() < stop:
        await asyncio.sleep(interval)
        rss, fds = sample(process)
        samples.append((rss, fds))
        print(f"{time.monotonic() - started:7.0f} {rss:9.1f} {fds:5d} {counts['churn']:8d} "
              f"{counts['published']:10d} {counts['slow']:9d} {counts['errors']:7d}", flush=True)
    failures = [r for r in await asyncio.gather(*tasks, return_exceptions=True) if isinstance(r, BaseException)]
    for failure in failures[:3]:
        print(f"a load generator failed: {failure!r}")
    if failures or not (counts["churn"] and counts["published"] and counts["slow"]):
        print(f"no verdict: {len(failures)} load generator(s) failed; traffic {counts}")
        return 1
    third = max(1, len(samples) // 3)
    rss_first = statistics.mean(s[0] for s in samples[:third])
    rss_last = statistics.mean(s[0] for s in samples[-third:])
    # Descriptors by their floor: a sample catches a varying number of churned connections in flight
    # (up to one per churner and slow reader), while a leak raises the lowest count too.
    fds_first = min(s[1] for s in samples[:third])
    fds_last = min(s[1] for s in samples[-third:])
    flat = rss_last <= rss_first * 1.10 + 2 and fds_last <= fds_first + 5
    print(f"RSS {rss_first:.1f} -> {rss_last:.1f} MB, fds (lowest) {fds_first} -> {fds_last}: "
          f"{'flat' if flat else 'GROWING'}")
    return 0 if flat else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="soak a running broker on this port")
    parser.add_argument("--pid", type=int, help="the running broker's process id (with --port)")
    parser.add_argument("--churners", type=int, default=20)
    parser.add_argument("--slow", type=int, default=5)
    parser.add_argument("--rate", type=int, default=2000, help="publishes per second")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("soak only targets this machine")
    broker = None
    if args.port:
        if not args.pid:
            parser.error("--port needs --pid, to read the broker's memory")
        host, port, pid = args.host, args.port, args.pid
    else:
        from coremq_broker import start

        broker = start(port=0)
        host, port, pid = broker.host, broker.port, broker.pid
    try:
        return asyncio.run(soak(host, port, psutil.Process(pid), args.minutes, args.interval,
                                args.churners, args.slow, args.rate))
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
