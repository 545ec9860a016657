"""``settings.COREMQ``, read once, checked, and turned into a :class:`BrokerConfig`.

Every key is optional. A key named after a :class:`BrokerConfig` field in upper
case (``HOST``, ``PORT``, ``HISTORY_LENGTH``, ``MAX_FRAME_SIZE``, ...) sets that
field, and its default is the field's default: there is no second copy of the
broker's defaults here. Besides those:

- ``ENCODER`` / ``DECODER``: a ``json.JSONEncoder`` / ``json.JSONDecoder``
  subclass or a callable, or the dotted path of one
  (``"django.core.serializers.json.DjangoJSONEncoder"``); they build the codec.
- ``WEB_HOST`` / ``WEB_PORT``: where ``run_coremq`` serves the web app.
- ``WEBSOCKET_MAX_MESSAGE_SIZE``: the largest frame a browser may send to
  ``/ws/coremq/``, in bytes (64 KiB); a larger one is answered with an error frame.
- ``STATUS_TOKEN``: a secret that opens ``/coremq/status.json`` and ``/metrics``
  to ``Authorization: Bearer <token>`` (scrapers); unset, only staff sessions.
- ``DEFAULT_POLICY``: what clients may do on queues that no permission rule
  matches: ``"open"`` (anyone, anything: the development default),
  ``"authenticated"`` (any logged-in user) or ``"deny"`` (nobody); see
  ``docs/security.md``.
- ``CLIENT_TOKEN``, or ``CLIENT_USERNAME`` and ``CLIENT_PASSWORD``: how this
  process's own clients (``publish()``, the status page, the WebSocket bridge)
  log in to the broker when the policy is not open.
- ``ENGINE`` (``"memory"``, the default, or ``"redis"``), ``REDIS_URL``,
  ``REDIS_PREFIX``, ``NODE_NAME``: several nodes sharing one Redis
  (``docs/cluster.md``); checked by :mod:`coremq_broker.cluster_checks`.

The settings are read lazily and the result is cached until Django sends
``setting_changed`` for ``COREMQ``, so ``override_settings`` works in tests.
A bad setting raises :class:`SettingError`; the system checks in
:mod:`coremq_broker.checks` report all of them, with ids and hints, before any
command runs.
"""

from __future__ import annotations

import enum
import os
from dataclasses import MISSING, Field, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from coremq_client.codec import JSONCodec

from .core.access import POLICIES
from .core.config import DEFAULT_HOST, BrokerConfig
from .store.config import StoreConfig

__all__ = [
    "SETTING",
    "BROKER_SETTINGS",
    "CODEC_SETTINGS",
    "WEB_DEFAULTS",
    "KNOWN_SETTINGS",
    "CHOICES",
    "SettingError",
    "get_config",
    "get_web_address",
    "get_web_setting",
    "get_status_token",
    "get_client_credentials",
    "setting_errors",
    "STORE_SETTINGS",
    "get_store_config",
    "CLUSTER_DEFAULTS",
    "get_cluster_settings",
]

SETTING = "COREMQ"

#: Settings that set a BrokerConfig field of the same name in lower case.
BROKER_SETTINGS: dict[str, Field] = {f.name.upper(): f for f in fields(BrokerConfig) if f.name != "codec"}
CODEC_SETTINGS = ("ENCODER", "DECODER")
#: The web server is not the broker's business, so its defaults live here; nor
#: is Django's side of access (the default policy, this process's credentials).
WEB_DEFAULTS: dict[str, Any] = {"WEB_HOST": DEFAULT_HOST, "WEB_PORT": 8000, "STATUS_TOKEN": None}
#: The WebSocket bridge's limit on one browser frame (coremq_broker/transports/websocket).
WEB_DEFAULTS["WEBSOCKET_MAX_MESSAGE_SIZE"] = 64 * 2**10
WEB_DEFAULTS.update(DEFAULT_POLICY="open", CLIENT_TOKEN=None, CLIENT_USERNAME=None, CLIENT_PASSWORD=None)
#: Secrets and names that are a string when set.
_OPTIONAL_TEXT = ("STATUS_TOKEN", "CLIENT_TOKEN", "CLIENT_USERNAME", "CLIENT_PASSWORD", "NODE_NAME")
#: The store's settings (``MEMCACHED_PORT``, ``MEMCACHED_MEMORY``, ...): StoreConfig's fields, upper-cased.
STORE_SETTINGS: dict[str, Field] = {f.name.upper(): f for f in fields(StoreConfig)}
#: The engine: one node in memory, or several sharing one Redis (docs/cluster.md). Their
#: values are checked by coremq_broker.cluster_checks (coremq.E100-E107); NODE_NAME None: <host>:<port>.
CLUSTER_DEFAULTS: dict[str, Any] = {"ENGINE": "memory", "REDIS_URL": "redis://127.0.0.1:6379/0",
                                    "REDIS_PREFIX": "coremq:", "NODE_NAME": None}
KNOWN_SETTINGS = (frozenset(BROKER_SETTINGS) | frozenset(CODEC_SETTINGS) | frozenset(WEB_DEFAULTS)
                  | frozenset(STORE_SETTINGS) | frozenset(CLUSTER_DEFAULTS))
_PORTS = frozenset({"PORT", "WEB_PORT", "MEMCACHED_PORT"})
#: Limits whose zero switches them off (see BrokerConfig) instead of being a mistake.
_ZERO_MEANS_NO_LIMIT = frozenset({"MAX_PUBLISH_RATE", "MAX_CONNECTIONS_PER_ADDRESS", "MAX_QUEUES"})
#: Text settings with a fixed set of values. The slow consumer policies are the
#: admin's (QueueSetting.SLOW_CONSUMER_POLICIES; a test keeps the two equal);
#: DURABLE_SYNCHRONOUS is SQLite's ``PRAGMA synchronous`` and goes into SQL.
CHOICES: dict[str, tuple[str, ...]] = {
    "SLOW_CONSUMER_POLICY": ("disconnect", "drop"),
    "DURABLE_SYNCHRONOUS": ("OFF", "NORMAL", "FULL", "EXTRA"),
    "DEFAULT_POLICY": POLICIES,
}

_cache: dict[str, Any] = {}


class SettingError(ImproperlyConfigured):
    """One bad ``COREMQ`` key: ``id`` is the system check id, ``hint`` the fix."""

    def __init__(self, id: str, message: str, hint: str) -> None:
        super().__init__(f"{message} ({id})")
        self.id = id
        self.message = message
        self.hint = hint


def get_config() -> BrokerConfig:
    """The broker configuration from ``settings.COREMQ``; raise :class:`SettingError` if bad."""
    if "config" not in _cache:
        values, errors = _resolve_all()
        if errors:
            raise errors[0]
        codec = JSONCodec(values.pop("ENCODER", None), values.pop("DECODER", None))
        options = {name.lower(): value for name, value in values.items() if name in BROKER_SETTINGS}
        _cache["config"] = BrokerConfig(codec=codec, **options)
    return _cache["config"]


def get_store_config() -> StoreConfig:
    """The store's configuration (``MEMCACHED_PORT``, ``MEMCACHED_MEMORY``, ...) from ``settings.COREMQ``."""
    if "store" not in _cache:
        values, errors = _resolve_all()
        if errors:
            raise errors[0]
        _cache["store"] = StoreConfig(**{name.lower(): value for name, value in values.items()
                                         if name in STORE_SETTINGS})
    return _cache["store"]


def get_web_address() -> tuple[str, int]:
    """``(WEB_HOST, WEB_PORT)``, where ``run_coremq`` serves HTTP by default."""
    values, errors = _resolve_all()
    if errors:
        raise errors[0]
    merged = {**WEB_DEFAULTS, **values}
    return merged["WEB_HOST"], merged["WEB_PORT"]


def get_status_token() -> str | None:
    """``STATUS_TOKEN``: the bearer token of the status JSON and the metrics, or None."""
    values, errors = _resolve_all()
    if errors:
        raise errors[0]
    return values.get("STATUS_TOKEN")


def get_client_credentials() -> dict[str, str]:
    """This process's credentials for its own clients: ``{"token": ...}``, ``{"username", "password"}`` or ``{}``.

    They are keyword arguments of ``MessageQueue``/``AsyncMessageQueue``.
    """
    values = {name: get_web_setting(f"CLIENT_{name.upper()}") for name in ("token", "username", "password")}
    return {name: value for name, value in values.items() if value is not None}


def get_web_setting(name: str) -> Any:
    """The value of a web-side key of ``WEB_DEFAULTS`` (``WEBSOCKET_MAX_MESSAGE_SIZE``, ...), cached."""
    key = f"web:{name}"
    if key not in _cache:
        values, errors = _resolve_all()
        if errors:
            raise errors[0]
        _cache[key] = values.get(name, WEB_DEFAULTS[name])
    return _cache[key]


def get_cluster_settings(*, engine: str | None = None, redis_url: str | None = None, node_name: str | None = None,
                         host: str = DEFAULT_HOST, port: int = 6747) -> Any:
    """The node's :class:`~coremq_broker.cluster.ClusterSettings`, or None with the embedded engine.

    ``engine``, ``redis_url`` and ``node_name`` override ``ENGINE``, ``REDIS_URL``
    and ``NODE_NAME`` (``run_coremq --redis``, ``--node-name``); ``host`` and
    ``port`` name the node by default (``<host>:<port>``; port 0: ``<machine>-<pid>``). Raises ``ClusterSettingError`` (a check id
    and a hint) for a value that cannot work.
    """
    values, errors = _resolve_all()
    if errors:
        raise errors[0]
    merged = {**CLUSTER_DEFAULTS, **{name: values[name] for name in CLUSTER_DEFAULTS if name in values}}
    if (engine or merged["ENGINE"]) != "redis":
        return None
    from .cluster.settings import parse_settings

    return parse_settings(redis_url or merged["REDIS_URL"], key_prefix=merged["REDIS_PREFIX"],
                          node_name=node_name or merged["NODE_NAME"], host=host, port=port)


def setting_errors() -> list[SettingError]:
    """Every problem with ``settings.COREMQ``, in a stable order (empty when it is fine)."""
    return _resolve_all()[1]


@receiver(setting_changed)
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING:
        _cache.clear()


def _resolve_all() -> tuple[dict[str, Any], list[SettingError]]:
    """The user's values, converted, and the errors met on the way."""
    raw = getattr(settings, SETTING, {})
    if not isinstance(raw, dict):
        return {}, [SettingError(
            "coremq.E001",
            f"settings.{SETTING} must be a dict, not {type(raw).__name__}.",
            f"Write COREMQ = {{'PORT': 6747, ...}} or leave {SETTING} out to use the defaults.",
        )]
    values: dict[str, Any] = {}
    errors: list[SettingError] = []
    for name in sorted(raw, key=str):
        try:
            values[name] = _resolve(name, raw[name])
        except SettingError as error:
            errors.append(error)
    errors.extend(_cross_check({**_defaults(), **values}))
    return values, errors


def _defaults() -> dict[str, Any]:
    defaults = {name: f.default for name, f in BROKER_SETTINGS.items() if f.default is not MISSING}
    return {**defaults, **WEB_DEFAULTS, **{name: f.default for name, f in STORE_SETTINGS.items()}, **CLUSTER_DEFAULTS}


def _resolve(name: Any, value: Any) -> Any:
    """Check and convert the value of one key; raise :class:`SettingError`."""
    if name not in KNOWN_SETTINGS:
        raise SettingError(
            "coremq.E002",
            f"settings.{SETTING} has an unknown key {name!r}.",
            f"Known keys: {', '.join(sorted(KNOWN_SETTINGS))}.",
        )
    if name in CODEC_SETTINGS:
        return _codec_part(name, value)
    default = (WEB_DEFAULTS[name] if name in WEB_DEFAULTS else STORE_SETTINGS[name].default if name in STORE_SETTINGS
               else CLUSTER_DEFAULTS[name] if name in CLUSTER_DEFAULTS else BROKER_SETTINGS[name].default)
    value = _typed(name, value, default)
    if name in _OPTIONAL_TEXT and value is not None and not isinstance(value, str):
        raise SettingError(
            "coremq.E003",
            f"settings.{SETTING}[{name!r}] must be a string or None, not {type(value).__name__}.",
            "Use a long random string, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`."
            if name == "STATUS_TOKEN" else "Read it from the environment, e.g. os.environ.get(...).",
        )
    _check_range(name, value, default)
    if name in CHOICES and value not in CHOICES[name]:
        raise SettingError(
            "coremq.E008",
            f"settings.{SETTING}[{name!r}] is {value!r}, which is not one of {', '.join(map(repr, CHOICES[name]))}.",
            f"Pick one of those, or remove the key for the default ({default!r}).",
        )
    return value


def _check_range(name: str, value: Any, default: Any) -> None:
    if name in _PORTS:
        if not 1 <= value <= 65535:
            raise SettingError(
                "coremq.E005",
                f"settings.{SETTING}[{name!r}] is {value}, which is not a TCP port.",
                "Use a port from 1 to 65535 (6747 is CoreMQ's; `run_coremq --port 0` picks a free one).",
            )
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        lowest_ok = 0 if name in _ZERO_MEANS_NO_LIMIT else None
        if value < 0 or (value == 0 and lowest_ok is None):
            bound = "zero or more (0: no limit)" if lowest_ok == 0 else "greater than zero"
            raise SettingError(
                "coremq.E004",
                f"settings.{SETTING}[{name!r}] is {value}; it must be {bound}.",
                f"Use a positive number, or remove the key for the default ({default!r}).",
            )
    elif isinstance(value, str) and not value.strip() and default != "":
        raise SettingError(
            "coremq.E004",
            f"settings.{SETTING}[{name!r}] is empty.",
            f"Give it a value, or remove the key for the default ({default!r}).",
        )


def _typed(name: str, value: Any, default: Any) -> Any:
    """``value`` if it has the type of ``default`` (ints pass for floats; enums by value or name)."""
    if default is None or default is MISSING:
        return value  # an optional field: its type cannot be told from the default
    kind = type(default)
    if isinstance(default, enum.Enum):
        for member in kind:
            if value is member or value == member.value or value == member.name:
                return member
    elif isinstance(value, bool) != isinstance(default, bool):
        pass  # True is an int to Python, not to a configuration file
    elif isinstance(value, kind) or (kind is float and isinstance(value, int)):
        return value
    raise SettingError(
        "coremq.E003",
        f"settings.{SETTING}[{name!r}] must be {_describe(default)}, not {type(value).__name__} ({value!r}).",
        f"The default is {default!r}.",
    )


def _describe(default: Any) -> str:
    if isinstance(default, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in type(default))
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(default), f"a {type(default).__name__}"
    )


def _codec_part(name: str, value: Any) -> Any:
    """The encoder or decoder named by ``value``, imported and accepted by :class:`JSONCodec`."""
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            raise _codec_error(name, f"{value!r} cannot be imported: {exc}") from None
    try:
        JSONCodec(**{name.lower(): value})
    except TypeError as exc:
        raise _codec_error(name, str(exc)) from None
    return value


def _codec_error(name: str, reason: str) -> SettingError:
    return SettingError(
        "coremq.E006",
        f"settings.{SETTING}[{name!r}] is not usable: {reason}.",
        "Use a json.JSONEncoder/JSONDecoder subclass or a callable, or its dotted path, "
        "e.g. 'django.core.serializers.json.DjangoJSONEncoder'.",
    )


def _cross_check(values: dict[str, Any]) -> list[SettingError]:
    errors = []
    high, low = values.get("WRITE_HIGH"), values.get("WRITE_LOW")
    if isinstance(high, int) and isinstance(low, int) and low > high:
        errors.append(SettingError(
            "coremq.E007",
            f"settings.{SETTING}['WRITE_LOW'] ({low}) is above WRITE_HIGH ({high}).",
            "The low-water mark must not exceed the high-water mark; asyncio's default is low = high // 4.",
        ))
    blob, buffer = values.get("MAX_FANOUT_BLOB"), values.get("MAX_WRITE_BUFFER")
    if isinstance(blob, int) and isinstance(buffer, int) and blob > buffer // 2:
        errors.append(SettingError(
            "coremq.E012",
            f"settings.{SETTING}['MAX_FANOUT_BLOB'] ({blob}) is above half of MAX_WRITE_BUFFER ({buffer}).",
            "A slow consumer under the drop policy keeps the newest half of MAX_WRITE_BUFFER: one piece of "
            "fan-out must fit in it. Lower MAX_FANOUT_BLOB (1 MiB by default) or raise MAX_WRITE_BUFFER.",
        ))
    cert, key = values.get("TLS_CERT"), values.get("TLS_KEY")
    if key and not cert:
        errors.append(SettingError(
            "coremq.E009",
            f"settings.{SETTING}['TLS_KEY'] is set but TLS_CERT is not.",
            "Set TLS_CERT to the certificate's PEM file too, or remove TLS_KEY.",
        ))
    token, username, password = (values.get(f"CLIENT_{name}") for name in ("TOKEN", "USERNAME", "PASSWORD"))
    if token is not None and (username is not None or password is not None):
        errors.append(SettingError(
            "coremq.E010",
            f"settings.{SETTING} sets CLIENT_TOKEN and CLIENT_USERNAME/CLIENT_PASSWORD.",
            "This process's clients log in one way: keep the token (preferred) or the username and password.",
        ))
    elif (username is None) != (password is None):
        errors.append(SettingError(
            "coremq.E010",
            f"settings.{SETTING} sets only one of CLIENT_USERNAME and CLIENT_PASSWORD.",
            "Set both, or use CLIENT_TOKEN with an API token made in the admin.",
        ))
    for name, path in (("TLS_CERT", cert), ("TLS_KEY", key)):
        if isinstance(path, str) and path and not os.path.isfile(path):
            errors.append(SettingError(
                "coremq.E009",
                f"settings.{SETTING}[{name!r}] is {path!r}, which is not a file.",
                "Give the path of a PEM file readable by the broker (the key may be in the certificate's file).",
            ))
    return errors
