"""Watch: each change of a key is published to the CoreMQ queue ``<prefix><key>`` (``coremq.store.<key>``).

Only queues that exist get a message (someone subscribed to it, or published
to it): a store of a million keys does not make a million queues. Who may
subscribe follows the broker's access rules for that queue name; the store
publishes as the server. :func:`publish_to_broker` is the one place that
reaches into the broker, so a change of the broker's internals is followed
there alone.

A change message is a JSON object: ``event`` (one of
:data:`~coremq_broker.store.store.EVENTS`), ``key``, and while the key holds
a value: ``value`` (text when it is UTF-8, else ``value_base64``; left out
past :data:`MAX_WATCHED_VALUE` bytes, ``size`` says how large), ``flags``,
``cas``, ``expires`` (a UNIX time, or null).
"""

from __future__ import annotations

import base64
import logging
from typing import Any, Callable

from .store import Item, Watch

__all__ = ["broker_watch", "change_message", "publish_to_broker", "MAX_WATCHED_VALUE"]

logger = logging.getLogger("coremq.store")

#: Values up to this size travel in the change message; larger ones only say their size.
MAX_WATCHED_VALUE = 64 * 2**10


def publish_to_broker(broker: Any, queue: str, message: dict[str, Any]) -> bool:
    """Publish ``message`` to ``queue`` as the server, if that queue exists; return whether it did.

    Uses the broker's public ``registry.queues`` and ``deliver(queue, stored)``:
    numbered, kept in the queue's history, fanned out to its subscribers.
    """
    target = broker.registry.queues.get(queue)
    if target is None:
        return False
    broker.deliver(target, message)
    return True


def change_message(event: str, key: bytes, item: Item | None) -> dict[str, Any]:
    """The JSON object a watcher receives for one change."""
    message: dict[str, Any] = {"event": event, "key": key.decode("utf-8", "backslashreplace")}
    if item is None:
        return message
    value = item.value
    message["size"] = len(value)
    if len(value) <= MAX_WATCHED_VALUE:
        try:
            message["value"] = value.decode("utf-8")
        except UnicodeDecodeError:
            message["value_base64"] = base64.b64encode(value).decode("ascii")
    message.update(flags=item.flags, cas=item.cas, expires=item.expires or None)
    return message


def broker_watch(broker: Callable[[], Any], prefix: str = "coremq.store.") -> Watch:
    """A :class:`~coremq_broker.store.Store` ``watch`` publishing to ``broker()``'s queues (None: nowhere).

    Keys that are not UTF-8 are not watched (queue names are text).
    """
    def watch(event: str, key: bytes, item: Item | None) -> None:
        target = broker()
        if target is None:
            return
        try:
            name = prefix + key.decode("utf-8")
        except UnicodeDecodeError:
            return
        if name in target.registry.queues:
            try:
                publish_to_broker(target, name, change_message(event, key, item))
            except Exception:  # the change is made: a broker that cannot take the message loses only it
                logger.exception("store watch: the change of %r could not be published to %r", key, name)

    return watch
