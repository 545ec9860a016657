"""The engine seam (core/engine.py) as another engine uses it: numbering later, or refusing, through real sockets."""

from __future__ import annotations

import asyncio
import json

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_broker.core.engine import Batch, MemoryEngine
from coremq_client.codec import encode_frame
from wire import RawClient


class LaterEngine(MemoryEngine):
    """Numbers each batch on a later turn of the loop, as an engine that asks another process does."""

    def publish(self, batch: Batch) -> None:
        asyncio.get_running_loop().call_later(0.01, MemoryEngine.publish, self, batch)


class RefusingEngine(MemoryEngine):
    """Refuses every other batch, numbers the others at once."""

    def __init__(self, config: BrokerConfig) -> None:
        super().__init__(config)
        self.calls = 0

    def publish(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls % 2:
            self._node.refused(batch, "engine says no")  # type: ignore[union-attr]
        else:
            super().publish(batch)


def publish_together(client: RawClient, queue: str, count: int) -> None:
    client.send_raw(b"".join(encode_frame(queue, json.dumps({"n": n}).encode()) for n in range(count)))


def test_an_engine_that_numbers_later_is_answered_and_delivered_in_order():
    """Acknowledgements of batches numbered after the read was handled come in request order with their ids;
    subscribers get every message once, in id order; history holds them."""
    config = BrokerConfig(port=0)
    running = BrokerThread(config, engine=LaterEngine(config))
    try:
        sub, pub = RawClient(running.host, running.port), RawClient(running.host, running.port)
        assert sub.control({"coremq_subscribe": ["later"]})["response"] == "OK: Subscribe successful"
        publish_together(pub, "later", 5)
        publish_together(pub, "later", 3)
        acks = [pub.read()[1] for _ in range(8)]
        assert [(ack["response"], ack["id"], ack["request"]) for ack in acks] == [
            ("OK: Message sent", n, n) for n in range(1, 9)]
        delivered = [sub.read()[1] for _ in range(8)]
        assert [(m["n"], m["coremq_id"], m["coremq_sender"]) for m in delivered] == [
            (n, n + 1, pub.id) for n in range(5)] + [(n, n + 6, pub.id) for n in range(3)]
        history = pub.control({"coremq_gethistory": ["later"]})
        assert [m["coremq_id"] for m in history["history"]["later"]] == list(range(1, 9))
    finally:
        running.stop()


def test_a_refused_batch_answers_each_message_and_is_neither_kept_nor_delivered():
    """A refusal is an ERROR per message with its request number and queue; the next batch still gets id 1."""
    config = BrokerConfig(port=0)
    running = BrokerThread(config, engine=RefusingEngine(config))
    try:
        sub, pub = RawClient(running.host, running.port), RawClient(running.host, running.port)
        sub.control({"coremq_subscribe": ["picky"]})
        publish_together(pub, "picky", 2)  # one run: refused whole
        assert [pub.read()[1] for _ in range(2)] == [
            {"response": "ERROR: engine says no", "code": "error", "queue": "picky", "request": n} for n in (1, 2)]
        publish_together(pub, "picky", 1)
        assert pub.read()[1] == {"response": "OK: Message sent", "id": 1, "request": 3}
        assert sub.read()[1]["coremq_id"] == 1
        assert running.call(lambda: running.broker.registry.errors) == 2
    finally:
        running.stop()
