"""``manage.py run_coremq``: the TCP broker and, unless ``--no-web``, the web app, in one process."""

from __future__ import annotations

from typing import Any, Callable

from django.core.management.base import BaseCommand, CommandError, CommandParser

from coremq_broker import conf
from coremq_broker.cluster.errors import ClusterUnavailable
from coremq_broker.cluster.settings import ClusterSettingError, redact


class Command(BaseCommand):
    help = (
        "Run the CoreMQ broker and (unless --no-web) the project's ASGI app under daphne "
        "on the same event loop. Stops gracefully on SIGINT and SIGTERM."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", help="broker address (default: COREMQ['HOST'])")
        parser.add_argument("--port", type=int, help="broker TCP port, 0 for any (default: COREMQ['PORT'])")
        parser.add_argument("--web-host", help="web address (default: COREMQ['WEB_HOST'])")
        parser.add_argument("--web-port", type=int, help="web port, 0 for any (default: COREMQ['WEB_PORT'])")
        parser.add_argument("--no-web", action="store_true", help="run the broker only, without daphne")
        parser.add_argument("--memcached-port", type=int,
                            help="the store's memcached port on the broker's host, 0 for any "
                                 "(default: COREMQ['MEMCACHED_PORT'], 11211)")
        parser.add_argument("--no-memcached", action="store_true", help="do not serve the store (memcached protocol)")
        parser.add_argument("--tls-cert", help="serve TCP clients over TLS with this PEM certificate "
                                               "(default: COREMQ['TLS_CERT'])")
        parser.add_argument("--tls-key", help="the certificate's PEM key, if not in its file (default: COREMQ['TLS_KEY'])")
        parser.add_argument("--redis", metavar="URL",
                            help="run as one node of several sharing this Redis, e.g. redis://127.0.0.1:6379/0 "
                                 "(default: COREMQ['REDIS_URL'] when COREMQ['ENGINE'] is 'redis'; docs/cluster.md)")
        parser.add_argument("--node-name", help="this node's name in the cluster (default: COREMQ['NODE_NAME'], "
                                                "else <host>:<port>)")

    def handle(self, *args: Any, **options: Any) -> None:
        from coremq_broker.auth.authenticator import authenticate
        from coremq_broker.auth.policy import access_watcher
        from coremq_broker.queue_settings import QueueSettingsWatcher
        from coremq_broker.server import WebServer, run

        for name in ("port", "web_port", "memcached_port"):
            if options[name] is not None and not 0 <= options[name] <= 65535:
                raise CommandError(f"--{name.replace('_', '-')} must be from 0 to 65535")
        config = conf.get_config()
        config = config.with_options(host=options["host"] or config.host, port=_given(options["port"], config.port))
        if options["tls_cert"]:  # the flags replace the settings' pair
            config = config.with_options(tls_cert=options["tls_cert"], tls_key=options["tls_key"] or "")
        elif options["tls_key"]:
            if not config.tls_cert:
                raise CommandError("--tls-key needs a certificate: --tls-cert or COREMQ['TLS_CERT']")
            config = config.with_options(tls_key=options["tls_key"])
        engine = self._engine(config, options)
        web = None
        if not options["no_web"]:
            from channels.routing import get_default_application

            web_host, web_port = conf.get_web_address()
            web = WebServer(
                application=get_default_application(),
                host=options["web_host"] or web_host,
                port=_given(options["web_port"], web_port),
                verbosity=options["verbosity"],
            )
        # Per-queue settings and the access policy from the admin: read here, off
        # any event loop, and followed by threads once the broker runs
        # (coremq_broker.snapshots). Logins are checked against Django's users.
        queue_settings, access = QueueSettingsWatcher(config), access_watcher()
        _check_durable_path(config, queue_settings.resolver)
        self.tls = bool(config.tls_cert)
        broker_options = {"queue_settings": queue_settings.resolver, "access": access.snapshot,
                          "authenticator": authenticate}
        watchers = [queue_settings, access, *self._store(options)]
        if engine is not None:
            broker_options["engine"] = engine
            watchers.append(_NodeAddress(engine))
        try:
            run(config, web=web, announce=self.announce, on_start=_attach_all(*watchers), broker_options=broker_options)
        except ClusterUnavailable as exc:  # an OSError too: said first
            raise CommandError(f"cannot serve: {str(exc).rstrip('.')}. Start Redis, or check REDIS_URL / --redis.") from exc
        except OSError as exc:
            raise CommandError(f"cannot serve: {exc}") from exc

    def _engine(self, config: Any, options: dict[str, Any]) -> Any:
        """The cluster engine when ``--redis`` or ``COREMQ['ENGINE'] = "redis"`` says so, else None (embedded)."""
        from coremq_broker.cluster.broker_engine import ClusterEngine

        try:
            cluster = conf.get_cluster_settings(engine="redis" if options["redis"] else None,
                                                redis_url=options["redis"], node_name=options["node_name"],
                                                host=config.host, port=config.port)
        except ClusterSettingError as exc:
            raise CommandError(f"{exc} ({exc.id}). {exc.hint}") from exc
        if cluster is None:
            if options["node_name"]:
                raise CommandError("--node-name needs a cluster: --redis URL or COREMQ['ENGINE'] = 'redis'")
            self.cluster = None
            return None
        self.cluster = cluster
        return ClusterEngine(cluster, address=f"{config.host}:{config.port}")

    def _store(self, options: dict[str, Any]) -> list[Any]:
        """The store served over the memcached protocol beside the broker (docs/store.md), unless --no-memcached."""
        if options["no_memcached"]:
            return []
        from coremq_broker.store.requests import StoreRequests
        from coremq_broker.transports.memcached import MemcachedService

        from django.conf import settings

        store_config = conf.get_store_config()
        port, required = options["memcached_port"], True
        if port is None and "MEMCACHED_PORT" not in getattr(settings, "COREMQ", {}):
            # The default: any free port beside a broker on any free port (--port 0); 11211
            # otherwise, and if that is taken the broker runs without the store (and says so).
            port, required = (0 if options["port"] == 0 else store_config.memcached_port), False
        # With the Redis engine the keys live in Redis: every node answers the same (docs/store.md).
        cluster = getattr(self, "cluster", None)
        shared = {"redis_url": cluster.redis_url, "key_prefix": cluster.key_prefix} if cluster is not None else {}
        service = MemcachedService(store_config, port=_given(port, store_config.memcached_port), required=required,
                                   announce=self.announce, **shared)
        # The same store from the CoreMQ protocol: coremq_get, coremq_set, ... (coremq_broker.store.requests).
        return [service, StoreRequests(service.store, store_config.memcached_watch_prefix)]

    def announce(self, service: str, host: str, port: int) -> None:
        """Print a bound address on stdout (scripts and tests wait for these lines)."""
        if service == "memcached":
            self.stdout.write(f"CoreMQ store (memcached protocol) listening on {host}:{port}")
        elif service == "memcached-unavailable":
            self.stdout.write(f"CoreMQ store not served: {host}:{port} is taken "
                              "(choose one with --memcached-port or COREMQ['MEMCACHED_PORT'], or --no-memcached)")
        elif service == "web":
            url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
            self.stdout.write(f"CoreMQ web app on {url}")
        else:
            cluster = getattr(self, "cluster", None)
            if cluster is not None:
                self.stdout.write(f"CoreMQ node {cluster.node_name} in the cluster on Redis at "
                                  f"{redact(cluster.redis_url)} (key prefix {cluster.key_prefix!r})")
            self.stdout.write(f"CoreMQ broker listening on {host}:{port} ({'TLS' if self.tls else 'TCP'})")
            _point_clients_at(host, port)
        self.stdout.flush()


def _point_clients_at(host: str, port: int) -> None:
    """Make this process's own clients (publish() in views, the status page) use the broker just bound.

    ``--host``/``--port`` (and port 0) may differ from ``settings.COREMQ``;
    the change is announced like ``override_settings`` does, so cached
    configuration and clients are dropped.
    """
    from django.conf import settings
    from django.core.signals import setting_changed

    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}
    value = {**getattr(settings, "COREMQ", {}), "HOST": wildcard.get(host, host), "PORT": port}
    settings.COREMQ = value
    setting_changed.send(sender=type(settings), setting="COREMQ", value=value, enter=True)


def _check_durable_path(config: Any, resolver: Any) -> None:
    """Refuse to start when durable queues are configured and ``DURABLE_PATH`` cannot be written.

    The system checks say so too (``coremq.E011`` for ``DURABLE_ALL``,
    ``coremq.W002`` otherwise); this also covers queues made durable in the
    admin, which the checks cannot see, and ``--skip-checks``.
    """
    from coremq_broker.core.durable import unwritable

    problem = unwritable(config.durable_path)
    if problem is None:
        return
    durable = [rule.pattern for rule in resolver.rules if dict(rule.overrides).get("durable")]
    if config.durable_all or durable:
        needed = "DURABLE_ALL is on" if config.durable_all else f"durable queue settings: {', '.join(durable)}"
        raise CommandError(f"durable history unavailable: DURABLE_PATH {config.durable_path!r} cannot be written "
                           f"({problem}) and {needed}. Point COREMQ['DURABLE_PATH'] at a writable file.")


class _NodeAddress:
    """Tells the cluster engine the address its listener bound (``--port 0``), for its heartbeats."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def attach(self, broker: Any) -> Callable[[], None]:
        self.engine.serving_at(broker.address)
        return lambda: None


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _attach_all(*watchers: Any) -> Callable[[Any], Callable[[], None]]:
    """``server.run``'s ``on_start``: attach every watcher to the broker; the result stops them all."""
    def on_start(broker: Any) -> Callable[[], None]:
        stops = [watcher.attach(broker) for watcher in watchers]

        def stop_all() -> None:
            for stop in stops:
                stop()

        return stop_all

    return on_start
