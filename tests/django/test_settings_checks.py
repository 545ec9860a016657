"""System checks on settings.COREMQ: each bad setting is an Error with its id and a hint."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from coremq_broker import conf
from coremq_broker.checks import check_settings
from coremq_broker.core.config import BrokerConfig


@pytest.mark.parametrize(
    ("value", "error_id"),
    [
        (["PORT", 1], "coremq.E001"),
        ({"PROT": 6747}, "coremq.E002"),
        ({"PORT": "6747"}, "coremq.E003"),
        ({"HISTORY_LENGTH": 2.5}, "coremq.E003"),
        ({"MAX_FRAME_SIZE": True}, "coremq.E003"),
        ({"SERVER_NAME": 7}, "coremq.E003"),
        ({"HISTORY_LENGTH": 0}, "coremq.E004"),
        ({"MAX_FRAME_SIZE": -1}, "coremq.E004"),
        ({"SHUTDOWN_TIMEOUT": 0}, "coremq.E004"),
        ({"HOST": ""}, "coremq.E004"),
        ({"PORT": 0}, "coremq.E005"),
        ({"PORT": 65536}, "coremq.E005"),
        ({"WEB_PORT": -80}, "coremq.E005"),
        ({"ENCODER": "no_such_module.Encoder"}, "coremq.E006"),
        ({"DECODER": "json.no_such_decoder"}, "coremq.E006"),
        ({"ENCODER": 42}, "coremq.E006"),
        ({"WRITE_HIGH": 1000, "WRITE_LOW": 2000}, "coremq.E007"),
        ({"MAX_PUBLISH_RATE": -1}, "coremq.E004"),
        ({"SLOW_CONSUMER_POLICY": "ignore"}, "coremq.E008"),
        ({"DURABLE_SYNCHRONOUS": "NORMAL; DROP TABLE x"}, "coremq.E008"),
        ({"TLS_CERT": "/nonexistent/cert.pem"}, "coremq.E009"),
        ({"TLS_KEY": __file__}, "coremq.E009"),
    ],
)
def test_bad_setting_is_an_error_with_id_and_hint(value: object, error_id: str) -> None:
    """Each kind of bad COREMQ value yields exactly one Error with its id and a hint."""
    with override_settings(COREMQ=value):
        errors = check_settings()
    assert [error.id for error in errors] == [error_id]
    assert errors[0].is_serious()
    assert errors[0].hint


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"PORT": 1, "WEB_PORT": 65535, "SHUTDOWN_TIMEOUT": 1, "HISTORY_LENGTH": 100},
        {"ENCODER": "django.core.serializers.json.DjangoJSONEncoder", "DECODER": "json.JSONDecoder"},
        {"SERVER_NAME": "edge-1", "WRITE_HIGH": 4096, "WRITE_LOW": 4096},
        {"MAX_PUBLISH_RATE": 0, "SLOW_CONSUMER_POLICY": "drop", "DURABLE_SYNCHRONOUS": "FULL"},
        {"TLS_CERT": "", "TLS_KEY": ""},
        {"TLS_CERT": __file__},
    ],
)
def test_good_settings_pass(value: dict) -> None:
    """Valid COREMQ values raise no check errors."""
    with override_settings(COREMQ=value):
        assert check_settings() == []


def test_every_problem_is_reported() -> None:
    """Several bad keys yield one error each, not just the first."""
    with override_settings(COREMQ={"PORT": 0, "NOPE": 1, "HISTORY_LENGTH": -5}):
        ids = sorted(error.id for error in check_settings())
    assert ids == ["coremq.E002", "coremq.E004", "coremq.E005"]


def test_every_broker_field_is_a_setting() -> None:
    """Every BrokerConfig field but the codec can be set from COREMQ under its upper-case name."""
    from dataclasses import fields

    names = {f.name.upper() for f in fields(BrokerConfig) if f.name != "codec"}
    assert names <= conf.KNOWN_SETTINGS


def test_checks_run_before_commands() -> None:
    """The checks are registered, so `manage.py check` fails on a bad setting."""
    with override_settings(COREMQ={"PORT": -1}):
        with pytest.raises(SystemCheckError, match="coremq.E005"):
            call_command("check")


def test_slow_consumer_choices_match_the_admin() -> None:
    """SLOW_CONSUMER_POLICY accepts exactly the policies the admin offers per queue."""
    from coremq_broker.models import QueueSetting

    assert conf.CHOICES["SLOW_CONSUMER_POLICY"] == tuple(value for value, _ in QueueSetting.SLOW_CONSUMER_POLICIES)


def test_defaults_pass_their_own_checks() -> None:
    """Every BrokerConfig default, written out in COREMQ, is accepted."""
    from dataclasses import fields

    explicit = {f.name.upper(): f.default for f in fields(BrokerConfig) if f.name != "codec"}
    with override_settings(COREMQ={**explicit, **conf.WEB_DEFAULTS}):
        assert check_settings() == []
