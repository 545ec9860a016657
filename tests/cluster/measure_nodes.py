"""Figures of run_coremq nodes (not a test: nothing is asserted): one embedded node vs nodes on one Redis.

    .venv/bin/python tests/cluster/measure_nodes.py

Starts its own redis-server on a free port and ``run_coremq --no-web --no-memcached`` processes:
one without Redis (the embedded engine), then two nodes on Redis. With one Python subscriber and
one Python publisher (the project's sync client), it reports:

- latency: publish-to-delivery, one message at a time (2,000, 1 ms apart), p50 and p99, for the
  embedded node, publisher and subscriber on the same Redis node, and on two nodes;
- rate: 20,000 messages published without replies, delivered per second to the subscriber.

The clients share the machine's two cores with the nodes and Redis: these figures are the
whole path as a Python client sees it, not the broker's ceiling (``python -m bench cluster``,
not written yet, is where those would go).
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the project
sys.path.insert(0, str(HERE.parent))  # tests/: redis_servers, servers
sys.path.insert(0, str(HERE))

from coremq_client.sync_client import MessageQueue  # noqa: E402
from redis_servers import RedisServer  # noqa: E402
from servers import ServerProcess  # noqa: E402



def node(database: Path, *flags: str) -> tuple[ServerProcess, int]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cluster_settings", "COREMQ_DATABASE": str(database),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    process = ServerProcess([sys.executable, "manage.py", "run_coremq", "--no-web", "--no-memcached", "--host",
                             "127.0.0.1", "--port", "0", *flags], env)
    line = process.wait_for("CoreMQ broker listening on")
    return process, int(re.search(r":(\d+) \(TCP\)", line).group(1))  # type: ignore[union-attr]


def latency(publish_port: int, subscribe_port: int, queue: str, count: int = 2000) -> tuple[float, float]:
    with MessageQueue("127.0.0.1", subscribe_port, queues=[queue]) as subscriber, \
            MessageQueue("127.0.0.1", publish_port) as publisher:
        publisher.publish(queue, {"warm": True})
        subscriber.receive(timeout=10)
        delays = []
        for n in range(count):
            publisher.publish(queue, {"t": time.perf_counter()}, reply=False)
            delivery = subscriber.receive(timeout=10)
            assert delivery is not None
            delays.append(time.perf_counter() - delivery.message["t"])
            time.sleep(0.001)
    delays.sort()
    return statistics.median(delays) * 1e3, delays[int(len(delays) * 0.99)] * 1e3


def rate(publish_port: int, subscribe_port: int, queue: str, count: int = 20_000) -> float:
    with MessageQueue("127.0.0.1", subscribe_port, queues=[queue]) as subscriber, \
            MessageQueue("127.0.0.1", publish_port) as publisher:
        publisher.publish(queue, {"n": -1})
        subscriber.receive(timeout=10)
        start = time.perf_counter()
        for n in range(count):
            publisher.publish(queue, {"n": n}, reply=False)
        got = 0
        while got < count:
            delivery = subscriber.receive(timeout=20)
            assert delivery is not None, got
            got += 1
        return count / (time.perf_counter() - start)


def main() -> None:
    database = Path(tempfile.mkdtemp(prefix="coremq-measure-")) / "db.sqlite3"
    redis = RedisServer()
    started: list[ServerProcess] = []
    try:
        embedded, embedded_port = node(database)
        started.append(embedded)
        one, one_port = node(database, "--redis", redis.url, "--node-name", "m1")
        two, two_port = node(database, "--redis", redis.url, "--node-name", "m2")
        started += [one, two]
        rows = [("embedded, one node", embedded_port, embedded_port),
                ("Redis engine, same node", one_port, one_port),
                ("Redis engine, across two nodes", one_port, two_port)]
        print(f"{'path':34} {'p50 ms':>8} {'p99 ms':>8} {'msg/s':>9}")
        for index, (label, publish_port, subscribe_port) in enumerate(rows):
            p50, p99 = latency(publish_port, subscribe_port, f"lat-{index}")
            per_second = rate(publish_port, subscribe_port, f"rate-{index}")
            print(f"{label:34} {p50:8.3f} {p99:8.3f} {per_second:9.0f}")
    finally:
        for process in started:
            process.stop()
        redis.close()


if __name__ == "__main__":
    main()
