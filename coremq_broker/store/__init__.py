"""The memcached-compatible key/value store (Django-free): :class:`Store`, its settings and its watch."""

from .config import StoreConfig
from .store import EVENTS, Item, Store
from .watch import broker_watch, change_message, publish_to_broker

__all__ = ["Store", "Item", "StoreConfig", "EVENTS", "broker_watch", "change_message", "publish_to_broker"]
