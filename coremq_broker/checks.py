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
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error

from . import conf

__all__ = ["check_settings"]


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Report every problem with ``settings.COREMQ``."""
    return [
        Error(error.message, hint=error.hint, obj=f"settings.{conf.SETTING}", id=error.id)
        for error in conf.setting_errors()
    ]
