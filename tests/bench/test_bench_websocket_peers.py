"""``python -m bench websocket``'s Node ``ws`` and ``websockets`` peers, and its shared check (no timing asserted)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from bench import websocket
from bench.wsclient import PING, TEXT
from bench.wsverify import SharedStream, StreamFollower


def test_both_peers_deliver_every_message_through_the_harness(tmp_path: Path) -> None:
    """The harness starts the Node ws and websockets peers (npm ci on first use) and every delivery arrives."""
    rc = websocket.main(["--coremq", "none", "--peers", "node,websockets", "--subscribers", "3,30",
                         "--duration", "0.3", "--latency-subscribers", "3", "--rate", "50", "--latency-duration", "0.3",
                         "--quiet-wait", "0", "--quiet-budget", "0", "--results-dir", str(tmp_path)])
    assert rc == 0
    results = json.loads((tmp_path / "websocket.json").read_text())
    assert set(results["servers"]) == {"node", "websockets"}
    assert results["versions"]["ws"] and results["versions"]["node"].startswith("v")
    for entry in results["servers"].values():
        assert [row["subscribers"] for row in entry["throughput"]] == [3, 30]
        for row in entry["throughput"]:
            assert row["ok"] and row["errors"] == [] and row["published"] > 0
            assert row["delivered"] == row["published"] * row["subscribers"] and row["lost"] == 0
            assert row["shared"] == row["subscribers"]  # every subscriber was checked against the shared stream
            assert row["generator_cpu"] >= 0 and row["server_cpu"] >= 0 and row["generator_us"] > 0
        latency = entry["latency"]
        assert latency["ok"] and latency["samples"] == latency["published"] * 3 > 0


@pytest.mark.parametrize("start", [websocket.start_node, websocket.start_websockets], ids=["node", "websockets"])
def test_peer_speaks_the_benchmark_protocol_subset(start, tmp_path: Path) -> None:
    """A peer answers subscribe and publish with their refs, delivers messages, and answers bad frames with errors."""
    server = start(tmp_path)

    async def talk() -> list[dict]:
        url = f"ws://127.0.0.1:{server.port}/ws/coremq/"
        async with connect(url + "?queues=a") as subscriber, connect(url) as publisher:
            seen = [json.loads(await subscriber.recv())]
            await publisher.send(json.dumps({"action": "subscribe", "queues": ["b"], "ref": 1}))
            seen.append(json.loads(await publisher.recv()))
            await publisher.send(json.dumps({"action": "publish", "queue": "a", "message": {"seq": 7}, "ref": 2}))
            seen.append(json.loads(await publisher.recv()))
            seen.append(json.loads(await subscriber.recv()))
            await publisher.send("not json")
            seen.append(json.loads(await publisher.recv()))
            await subscriber.send(json.dumps({"action": "publish", "queue": "b", "message": "hi", "ref": 3}))
            seen.append(json.loads(await subscriber.recv()))
            seen.append(json.loads(await publisher.recv()))
            return seen

    try:
        seen = asyncio.run(asyncio.wait_for(talk(), 30))
    finally:
        server.stop()
    assert seen[0] == {"type": "subscribed", "queues": ["a"], "ref": None}
    assert seen[1] == {"type": "subscribed", "queues": ["b"], "ref": 1}
    assert seen[2] == {"type": "published", "queue": "a", "ref": 2}
    assert seen[3] == {"type": "message", "queue": "a", "message": {"seq": 7}}
    assert seen[4]["type"] == "error" and seen[4]["error"].startswith("invalid JSON")
    assert seen[5] == {"type": "published", "queue": "b", "ref": 3}
    assert seen[6] == {"type": "message", "queue": "b", "message": "hi"}


def _frame(payload: bytes, opcode: int = TEXT) -> bytes:
    n = len(payload)
    return bytes([0x80 | opcode, n]) + payload if n < 126 else bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big") + payload


def _messages(seqs) -> bytes:
    return b"".join(_frame(b'{"type":"message","queue":"q","message":{"seq":%d,"pad":"%s"}}' % (seq, b"x" * 64))
                    for seq in seqs)


def test_followers_cut_anywhere_count_every_message() -> None:
    """Subscribers whose identical bytes arrive in different chunks all count every message, checked once."""
    stream = _messages(range(50))
    errors: list[str] = []
    shared = SharedStream(errors, keep=1000)  # small, so that trimming happens
    left: list[int] = []
    followers = [StreamFollower(shared, lambda backlog, count: left.append(count)) for _ in range(3)]
    counts = [0, 0, 0]
    for size, follower, i in ((1, followers[0], 0), (77, followers[1], 1), (len(stream), followers[2], 2)):
        for start in range(0, len(stream), size):
            counts[i] += follower.feed(stream[start:start + size])
    assert errors == [] and left == [] and counts == [50, 50, 50]


def test_a_lost_message_in_the_stream_fails_the_run() -> None:
    """A gap in the sequence numbers (message 3 missing) is reported."""
    errors: list[str] = []
    follower = StreamFollower(SharedStream(errors), lambda backlog, count: None)
    follower.feed(_messages([0, 1, 2, 4, 5]))
    assert errors == ["a subscriber expected message 3 and got 4"]


def test_a_follower_whose_bytes_differ_leaves_at_a_frame_boundary() -> None:
    """A subscriber that got a ping the others did not leaves with the bytes from the last frame it shared."""
    errors: list[str] = []
    shared = SharedStream(errors)
    first = StreamFollower(shared, lambda backlog, count: pytest.fail("the first follower has the reference bytes"))
    assert first.feed(_messages(range(10))) == 10
    left: list[tuple[bytes, int]] = []
    other = StreamFollower(shared, lambda backlog, count: left.append((backlog, count)))
    mine = _messages(range(4)) + _frame(b"hi", PING) + _messages(range(4, 10))
    cut = len(_messages(range(3))) + 5  # inside message 3's frame
    assert other.feed(mine[:cut]) == 3
    assert other.feed(mine[cut:]) == 0 and not other.active
    backlog, count = left[0]
    assert count == 3 and backlog == mine[len(_messages(range(3))):]
    assert errors == []
