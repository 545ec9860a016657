"""The store's settings in settings.COREMQ: defaults from StoreConfig, checked like the broker's."""

from __future__ import annotations

from django.test import override_settings

from coremq_broker import conf
from coremq_broker.store.config import StoreConfig


def test_defaults_and_values():
    """MEMCACHED_PORT 11211 and MEMCACHED_MEMORY 64 MiB by default; keys set the StoreConfig fields."""
    with override_settings(COREMQ={}):
        assert conf.get_store_config() == StoreConfig() and StoreConfig().memcached_memory == 64 * 2**20
        assert StoreConfig().memcached_port == 11211
    with override_settings(COREMQ={"MEMCACHED_PORT": 11311, "MEMCACHED_MEMORY": 2**20, "MEMCACHED_WATCH": False}):
        config = conf.get_store_config()
        assert (config.memcached_port, config.memcached_memory, config.memcached_watch) == (11311, 2**20, False)


def test_bad_values_are_check_errors():
    """A negative memory, a port out of range or a wrong type is a system check error with its id."""
    with override_settings(COREMQ={"MEMCACHED_MEMORY": -1, "MEMCACHED_PORT": 99999, "MEMCACHED_WATCH": "yes"}):
        ids = sorted(error.id for error in conf.setting_errors())
    assert ids == ["coremq.E003", "coremq.E004", "coremq.E005"]
