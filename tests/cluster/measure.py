"""Figures of the cluster library alone (no broker): publish rate and cross-node delivery latency.

    .venv/bin/python tests/cluster/measure.py

Starts its own redis-server on a free port; node "a" publishes, node "b" listens. Not a test
(nothing is asserted); `python -m bench cluster` (not written yet) is where broker figures go.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: redis_servers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from redis_nodes import Node, RedisServer  # noqa: E402

STAMPS = b',"coremq_sender":"0f0e5c1a-9c1e-4d0e-8f5e-2b7f6c1d2e3f","coremq_sent":1764622800.123,"coremq_id":'
BODY = b'{"title":"hello","n":12345}'


async def rate(a: Node, b: Node, batch: int, total: int, concurrency: int) -> float:
    queue = f"rate-{batch}-{concurrency}"
    b.engine.subscribe(queue)
    await b.engine.sync()
    start = time.perf_counter()

    async def publisher(count: int) -> None:
        for _ in range(count):
            await a.engine.publish(queue, [BODY] * batch, STAMPS, history_length=100)

    per = total // batch // concurrency
    await asyncio.gather(*(publisher(per) for _ in range(concurrency)))
    await b.wait_for(lambda: len(b.ids(queue)) == per * concurrency * batch, timeout=120)
    return per * concurrency * batch / (time.perf_counter() - start)


async def latency(a: Node, b: Node, count: int) -> tuple[float, float]:
    queue = "latency"
    arrived: list[asyncio.Future[None]] = []
    on_delivery = b.engine.subscriber.on_delivery
    b.engine.subscriber.on_delivery = lambda delivery: arrived[-1].set_result(None) if arrived else None
    b.engine.subscribe(queue)
    await b.engine.sync()
    samples = []
    for _ in range(count):
        arrived.append(asyncio.get_running_loop().create_future())
        sent = time.perf_counter()
        await a.engine.publish(queue, [BODY], STAMPS, history_length=10)
        await arrived[-1]
        samples.append(time.perf_counter() - sent)
    b.engine.subscriber.on_delivery = on_delivery
    samples.sort()
    return statistics.median(samples) * 1e3, samples[int(len(samples) * 0.99)] * 1e3


async def main() -> None:
    server = RedisServer()
    a, b = Node(server, "a", probe_interval=2.0), Node(server, "b", probe_interval=2.0)
    try:
        await a.engine.start()
        await b.engine.start()
        for batch, concurrency in ((1, 1), (1, 50), (100, 4)):
            figure = await rate(a, b, batch, 50_000, concurrency)
            print(f"batch {batch:>3}, {concurrency:>2} publishers at once: {figure:>9,.0f} messages/s published and delivered")
        p50, p99 = await latency(a, b, 1000)
        print(f"publish on a -> delivery on b, one at a time: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    finally:
        await a.engine.close()
        await b.engine.close()
        server.close()


if __name__ == "__main__":
    asyncio.run(main())
