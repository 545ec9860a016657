"""What a slow application costs the Python client: messages waiting, RSS, and who waits instead.

``python -m bench.slow_application [--messages 20000] [--size 1000] [--pause 0.001] [--max-pending N|none]``

A broker runs in a process of its own (``coremq_broker.start``); in this
process a ``MessageQueue`` subscriber whose application sleeps ``pause``
seconds per message, and a publisher (replies off) that sends ``messages``
messages of ``size`` bytes as fast as the broker takes them. Printed when the
publisher is done: how long publishing took, how many the application had
received, the most messages that waited in the client (``pending``) and the
growth of this process's RSS; then the application goes on until it has every
message, and the run checks they came once each and in order (exit 1 if not).
With ``--max-pending none`` the client buffers without bound, as before
``max_pending`` existed.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

import psutil

from coremq_broker import start
from coremq_client import MessageQueue

MB = 2**20


def run(messages: int, size: int, pause: float, max_pending: int | None) -> bool:
    broker = start(port=0, history_length=messages)
    process = psutil.Process()
    try:
        sub = MessageQueue(broker.host, broker.port, queues=["slow"], max_pending=max_pending, timeout=60)
        pub = MessageQueue(broker.host, broker.port, options={"reply": False}, timeout=60)
        sub.connect()
        pub.connect()
        baseline = process.memory_info().rss
        received: list[int] = []
        peak_pending = 0
        peak_rss = baseline

        def application() -> None:
            nonlocal peak_pending, peak_rss
            while len(received) < messages:
                delivery = sub.receive(60)
                if delivery is None:
                    return
                received.append(delivery.message["n"])
                peak_pending = max(peak_pending, sub.pending)
                if len(received) % 500 == 0:
                    peak_rss = max(peak_rss, process.memory_info().rss)
                time.sleep(pause)

        thread = threading.Thread(target=application, daemon=True)
        thread.start()
        padding = "x" * size
        began = time.monotonic()
        for n in range(messages):
            pub.publish("slow", {"n": n, "p": padding})
            if n % 2000 == 0:
                peak_rss = max(peak_rss, process.memory_info().rss)
        pub.status()  # every publish handled
        published_in = time.monotonic() - began
        peak_rss = max(peak_rss, process.memory_info().rss)
        print(f"max_pending={max_pending}: published {messages} x {size} B in {published_in:.1f} s; "
              f"the application had {len(received)}; at most {peak_pending} waited in the client; "
              f"RSS {baseline / MB:.0f} -> {peak_rss / MB:.0f} MB (+{(peak_rss - baseline) / MB:.1f} MB)",
              flush=True)
        thread.join()
        status = pub.status()
        ok = received == list(range(messages))
        print(f"  all {messages} received once and in order: {ok}; slow consumers seen by the broker: "
              f"{status.get('slow_consumers')}", flush=True)
        sub.close()
        pub.close()
        return ok
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=0.001)
    parser.add_argument("--max-pending", default="10000", help="an int, or none for no bound")
    args = parser.parse_args(argv)
    max_pending = None if args.max_pending == "none" else int(args.max_pending)
    return 0 if run(args.messages, args.size, args.pause, max_pending) else 1


if __name__ == "__main__":
    sys.exit(main())
