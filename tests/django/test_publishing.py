"""publish()/apublish() from Django code reach subscribers of the live broker; on_commit follows the transaction."""

from __future__ import annotations

from typing import Iterator

import pytest
from django.db import transaction

from coremq_broker import apublish, publish
from coremq_client.errors import LocalUsageError
from coremq_client.sync_client import MessageQueue

pytestmark = pytest.mark.usefixtures("broker_settings")


@pytest.fixture
def counter_subscriber(broker_settings) -> Iterator[MessageQueue]:
    """A client of the live broker subscribed to the ``counter`` queue."""
    with MessageQueue(broker_settings.host, broker_settings.port, queues=["counter"]) as client:
        yield client


def test_view_publish_reaches_subscriber(client, counter_subscriber: MessageQueue) -> None:
    """POST /counter/increment/ publishes through publish() and a subscriber receives the message."""
    response = client.post("/counter/increment/", {"by": 3})
    assert response.status_code == 200
    assert response.json()["reply"]["response"] == "OK: Message sent"
    queue, message = counter_subscriber.get_message(timeout=5)
    assert queue == "counter"
    assert (message["action"], message["by"]) == ("increment", 3)


def test_view_rejects_get(client) -> None:
    """The publishing view only takes POST."""
    assert client.get("/counter/increment/").status_code == 405


@pytest.mark.django_db(transaction=True)
def test_on_commit_publishes_after_commit(counter_subscriber: MessageQueue) -> None:
    """publish(on_commit=True) inside atomic() sends nothing until the transaction commits."""
    with transaction.atomic():
        assert publish("counter", {"n": 1}, on_commit=True) is None
        assert counter_subscriber.get_message(timeout=0.3) == (None, None)
    queue, message = counter_subscriber.get_message(timeout=5)
    assert (queue, message["n"]) == ("counter", 1)


@pytest.mark.django_db(transaction=True)
def test_on_commit_never_publishes_on_rollback(counter_subscriber: MessageQueue) -> None:
    """publish(on_commit=True) in a transaction that rolls back sends nothing."""
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            publish("counter", {"n": "rolled back"}, on_commit=True)
            raise RuntimeError("roll back")
    publish("counter", {"n": "marker"})
    queue, message = counter_subscriber.get_message(timeout=5)
    assert message["n"] == "marker"


def test_client_follows_settings_change(settings, broker, counter_subscriber: MessageQueue) -> None:
    """After COREMQ changes, publish() connects to the new broker, not the old one."""
    publish("counter", {"n": "old"})
    assert counter_subscriber.get_message(timeout=5)[1]["n"] == "old"
    settings.COREMQ = {"HOST": broker.host, "PORT": broker.port}
    with MessageQueue(broker.host, broker.port, queues=["counter"]) as other:
        publish("counter", {"n": "new"})
        assert other.get_message(timeout=5)[1]["n"] == "new"
    assert counter_subscriber.get_message(timeout=0.3) == (None, None)


@pytest.mark.asyncio
async def test_apublish_reaches_subscriber(counter_subscriber: MessageQueue) -> None:
    """apublish() from async code returns the broker's reply and the subscriber gets the message."""
    reply = await apublish("counter", {"n": "async"})
    assert reply["response"] == "OK: Message sent"
    queue, message = counter_subscriber.get_message(timeout=5)
    assert (queue, message["n"]) == ("counter", "async")


@pytest.mark.asyncio
async def test_publish_refuses_to_block_the_loop() -> None:
    """The blocking publish() called from a running event loop raises instead of stalling it."""
    with pytest.raises(LocalUsageError, match="apublish"):
        publish("counter", {"n": 0})
