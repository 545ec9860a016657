"""System checks for ``settings.COREMQ``: every bad key is an ``Error`` with an id and a hint.

Ids (the conditions live in :mod:`coremq_broker.conf`):

- ``coremq.E001`` ``COREMQ`` is not a dict
- ``coremq.E002`` unknown key
- ``coremq.E003`` value of the wrong type
- ``coremq.E004`` a limit that is zero (where zero is not "no limit") or negative, or an empty text
- ``coremq.E005`` a port outside 1..65535
- ``coremq.E006`` ``ENCODER``/``DECODER`` cannot be imported or used
- ``coremq.E007`` ``WRITE_LOW`` above ``WRITE_HIGH``
- ``coremq.E008`` a text setting that is not one of its choices (``SLOW_CONSUMER_POLICY``, ...)
- ``coremq.E009`` ``TLS_CERT``/``TLS_KEY`` not a file, or a key without a certificate
- ``coremq.E010`` ``CLIENT_TOKEN`` together with ``CLIENT_USERNAME``/``CLIENT_PASSWORD``, or only one of those two
- ``coremq.E011`` ``DURABLE_ALL`` is on and ``DURABLE_PATH`` cannot be written (no directory, read-only, ...)
- ``coremq.E012`` ``MAX_FANOUT_BLOB`` above half of ``MAX_WRITE_BUFFER``
- ``coremq.W001`` ``DEFAULT_POLICY`` is ``"open"`` while ``DEBUG`` is off: anyone who reaches the broker may do anything
- ``coremq.W002`` ``DURABLE_PATH`` cannot be written: queues made durable in the admin will refuse every publish
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from . import conf
from .core.durable import unwritable

__all__ = ["check_settings", "check_access", "check_durable_path"]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report every problem with ``settings.COREMQ``."""
    return [
        Error(error.message, hint=error.hint, obj=f"settings.{conf.SETTING}", id=error.id)
        for error in conf.setting_errors()
    ]


def check_access(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when the open default policy runs outside development."""
    if conf.setting_errors() or settings.DEBUG or conf.get_web_setting("DEFAULT_POLICY") != "open":
        return []
    return [Warning(
        f"settings.{conf.SETTING}['DEFAULT_POLICY'] is 'open' while DEBUG is False: anyone who can reach "
        "the broker may publish, subscribe and read history on every queue that no permission rule covers.",
        hint="Set COREMQ['DEFAULT_POLICY'] to 'authenticated' or 'deny' and grant access with permission "
             "rules in the admin; see docs/security.md.",
        obj=f"settings.{conf.SETTING}",
        id="coremq.W001",
    )]


def check_durable_path(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report a ``DURABLE_PATH`` the broker could not write: an error with ``DURABLE_ALL``, else a warning.

    Without ``DURABLE_ALL`` only queues made durable in the admin need the
    file, and they may never exist; with it every publish does.
    """
    if conf.setting_errors():
        return []
    config = conf.get_config()
    problem = unwritable(config.durable_path)
    if problem is None:
        return []
    hint = ("Point COREMQ['DURABLE_PATH'] at a file in a directory the broker's user can write, on a "
            "writable file system; see docs/reliability.md.")
    if config.durable_all:
        return [Error(f"settings.{conf.SETTING}['DURABLE_PATH'] ({config.durable_path!r}) cannot be written: "
                      f"{problem}; with DURABLE_ALL every publish would be refused.",
                      hint=hint, obj=f"settings.{conf.SETTING}", id="coremq.E011")]
    return [Warning(f"settings.{conf.SETTING}['DURABLE_PATH'] ({config.durable_path!r}) cannot be written: "
                    f"{problem}; publishes to queues made durable in the admin would be refused.",
                    hint=hint, obj=f"settings.{conf.SETTING}", id="coremq.W002")]
