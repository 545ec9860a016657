"""``python -m bench.bounds``: what one client can make a broker with the default bounds hold.

Runs ``python -m bench.serve`` (``BrokerConfig()`` defaults, no Django) in a
process of its own and replays the hostile clients of issue 11 item 5 against
it, printing the broker's resident memory (RSS) after each:

1. one anonymous client publishes ``--queues`` x 10 messages of ``--size``
   bytes to queues of its own, then disconnects: what stays is bounded by
   MAX_HISTORY_BYTES;
2. a history request for 50 of those queues (a few hundred bytes): the
   largest reply frame and the pages it takes, bounded by MAX_FRAME_SIZE;
3. ``--partial`` connections each send the header and most of a 1 MiB frame
   and stop: held until FRAME_TIMEOUT (30 s by default; ``--wait`` seconds
   are waited, 0 to skip the wait).

Bounded in time (about a minute with the wait) and only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from typing import Sequence

from coremq_client.codec import FrameParser, encode_frame

from .coremq_process import CoreMQProcess
from .net import source_address

__all__ = ["main"]


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class Client:
    """A blocking socket that reads frames (the welcome first)."""

    def __init__(self, port: int, index: int = 0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60,
                                             source_address=source_address(index))
        self.parser = FrameParser(max_frame_size=2**31)
        self.pending: list = []
        self.id = self.frame()[0]

    def frame(self) -> tuple[str, bytes]:
        while not self.pending:
            data = self.sock.recv(2**20)
            if not data:
                raise ConnectionError("closed by the broker")
            self.parser.receive_data(data)
            self.pending += self.parser.events()
        return self.pending.pop(0)

    def request(self, message: dict) -> tuple[int, dict]:
        self.sock.sendall(encode_frame(self.id, json.dumps(message).encode()))
        queue, body = self.frame()
        return len(queue) + 1 + len(body), json.loads(body)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bounds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, default=60)
    parser.add_argument("--size", type=int, default=280_000, help="bytes per message")
    parser.add_argument("--partial", type=int, default=40)
    parser.add_argument("--wait", type=float, default=32.0, help="seconds to wait for FRAME_TIMEOUT (0: skip)")
    args = parser.parse_args(argv)
    with CoreMQProcess("serve") as broker:
        pid, port = broker.pid, broker.port
        base = rss(pid)
        print(f"broker RSS at start: {base / 2**20:.0f} MiB")
        publisher = Client(port)
        pad = "p" * args.size
        for q in range(args.queues):
            frames = b"".join(encode_frame(f"hoard{q}", json.dumps({"n": n, "pad": pad}).encode()) for n in range(10))
            publisher.sock.sendall(frames)
            for _ in range(10):
                publisher.frame()
        publisher.sock.close()
        time.sleep(0.5)
        observer = Client(port, 1)
        status = observer.request({"coremq_status": True})[1]
        print(f"1. {args.queues * 10} messages of {args.size:,} bytes to {args.queues} queues, publisher gone: "
              f"history holds {status['history_bytes'] / 2**20:.1f} MiB (limit "
              f"{status['history_bytes_limit'] / 2**20:.0f} MiB, {status['history_evicted']} evicted); "
              f"RSS +{(rss(pid) - base) / 2**20:.0f} MiB")
        since = {f"hoard{q}": 0 for q in range(args.queues - 50, args.queues)}
        pages = largest = got = 0
        started = time.perf_counter()
        while since:
            size, reply = observer.request({"coremq_gethistory": since})
            pages += 1
            largest = max(largest, size)
            got += sum(len(messages) for messages in reply["history"].values())
            since = {name: reply["history"][name][-1]["coremq_id"] if reply["history"][name] else since[name]
                     for name in reply.get("more", {})}
        print(f"2. history of 50 queues: {got} messages in {pages} replies, the largest {largest:,} bytes, "
              f"{time.perf_counter() - started:.2f} s; RSS +{(rss(pid) - base) / 2**20:.0f} MiB")
        partial = []
        for index in range(args.partial):
            client = Client(port, 2 + index)
            client.sock.sendall(encode_frame(client.id, b'{"coremq_options": {}}'))  # the welcome's deadline is met
            client.frame()
            client.sock.sendall(b"+1048000 q " + b"x" * 1_040_000)
            partial.append(client)
        time.sleep(0.5)
        print(f"3. {args.partial} frames of 1 MiB started and not finished: RSS +{(rss(pid) - base) / 2**20:.0f} MiB")
        if args.wait:
            time.sleep(args.wait)
            closed = 0
            for client in partial:
                try:
                    client.frame()
                    client.frame()
                except (ConnectionError, OSError):
                    closed += 1
            print(f"   after {args.wait:g} s: {closed} of {args.partial} closed by FRAME_TIMEOUT; "
                  f"RSS +{(rss(pid) - base) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
