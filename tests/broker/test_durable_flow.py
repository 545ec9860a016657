"""Durable queues on a healthy disk under a publisher at full speed: flow control, not refusals."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from coremq_broker import start
from coremq_client.codec import FrameParser, encode_frame

COUNT = 200_000


@pytest.mark.timeout(120)
def test_a_full_speed_durable_publisher_is_slowed_not_refused(tmp_path: Path) -> None:
    """200,000 durable publishes pipelined on a healthy disk: every one stored and acked in order, none refused
    (the broker used to refuse about a third with 'durable history unavailable: ... waiting for the disk')."""
    with start(host="127.0.0.1", port=0, log_level="WARNING", durable_all=True,
               durable_path=str(tmp_path / "history.sqlite3")) as broker:
        sock = socket.create_connection((broker.host, broker.port))
        parser = FrameParser()
        replies: list[dict] = []

        def read() -> None:
            while len(replies) <= COUNT:  # the welcome, then one reply per publish
                data = sock.recv(2**20)
                if not data:
                    return
                parser.receive_data(data)
                replies.extend(json.loads(body) for _, body in parser.events())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        for first in range(0, COUNT, 1000):
            sock.sendall(b"".join(encode_frame("ledger", b'{"n":%d,"pad":"%s"}' % (n, b"x" * 60))
                                  for n in range(first, first + 1000)))
        reader.join(100)
        sock.close()
    answers = replies[1:]
    refused = [r for r in answers if r["response"] != "OK: Message sent"]
    assert refused == [] and len(answers) == COUNT, (len(answers), refused[:3])
    assert sorted(r["id"] for r in answers) == list(range(1, COUNT + 1))
    assert sorted(r["request"] for r in answers) == list(range(1, COUNT + 1))
