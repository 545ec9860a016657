"""coremq_broker.conf: settings.COREMQ read lazily into a BrokerConfig, following override_settings."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.serializers.json import DjangoJSONEncoder
from django.test import override_settings

from coremq_broker import conf
from coremq_broker.core.config import BrokerConfig


def test_defaults_are_brokerconfig_defaults() -> None:
    """With COREMQ empty or missing, the config is BrokerConfig() and the web address 127.0.0.1:8000."""
    with override_settings(COREMQ={}):
        assert conf.get_config() == BrokerConfig()
        assert conf.get_web_address() == ("127.0.0.1", 8000)
    with override_settings():
        from django.conf import settings

        del settings.COREMQ
        conf._reset(setting="COREMQ")  # a deletion sends no setting_changed
        assert conf.get_config() == BrokerConfig()
    conf._reset(setting="COREMQ")  # nor does its undoing


def test_override_settings_is_followed() -> None:
    """A changed COREMQ shows in get_config() at once and is undone when the override ends."""
    before = conf.get_config()
    with override_settings(COREMQ={"PORT": 7001, "HISTORY_LENGTH": 3, "SERVER_NAME": "test"}):
        config = conf.get_config()
        assert (config.port, config.history_length, config.server_name) == (7001, 3, "test")
    assert conf.get_config() == before


def test_settings_fixture_is_followed(settings) -> None:
    """pytest-django's settings fixture resets the cache too."""
    settings.COREMQ = {"MAX_FRAME_SIZE": 4096, "WEB_HOST": "0.0.0.0", "WEB_PORT": 8080}
    assert conf.get_config().max_frame_size == 4096
    assert conf.get_web_address() == ("0.0.0.0", 8080)


def test_encoder_by_dotted_path_or_class() -> None:
    """ENCODER may be a dotted path or the class itself; either becomes the codec's encoder."""
    for encoder in ("django.core.serializers.json.DjangoJSONEncoder", DjangoJSONEncoder):
        with override_settings(COREMQ={"ENCODER": encoder}):
            assert conf.get_config().codec.encoder is DjangoJSONEncoder


def test_int_accepted_for_float() -> None:
    """A whole number is a valid float setting (SHUTDOWN_TIMEOUT = 2)."""
    with override_settings(COREMQ={"SHUTDOWN_TIMEOUT": 2}):
        assert conf.get_config().shutdown_timeout == 2


def test_bad_setting_raises_improperly_configured() -> None:
    """get_config() refuses a bad COREMQ with the check's id in the message."""
    with override_settings(COREMQ={"PORT": "x"}):
        with pytest.raises(ImproperlyConfigured, match=r"coremq\.E003"):
            conf.get_config()
