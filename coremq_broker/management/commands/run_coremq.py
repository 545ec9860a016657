"""``manage.py run_coremq``: the TCP broker and, unless ``--no-web``, the web app, in one process."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from coremq_broker import conf


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

    def handle(self, *args: Any, **options: Any) -> None:
        from coremq_broker.queue_settings import QueueSettingsWatcher
        from coremq_broker.server import WebServer, run

        for name in ("port", "web_port"):
            if options[name] is not None and not 0 <= options[name] <= 65535:
                raise CommandError(f"--{name.replace('_', '-')} must be from 0 to 65535")
        config = conf.get_config()
        config = config.with_options(host=options["host"] or config.host, port=_given(options["port"], config.port))
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
        # Per-queue settings from the admin: read here, off any event loop, and
        # followed by a thread once the broker runs (coremq_broker.queue_settings).
        watcher = QueueSettingsWatcher(config)
        try:
            run(config, web=web, announce=self.announce,
                broker_options={"queue_settings": watcher.resolver}, on_start=watcher.attach)
        except OSError as exc:
            raise CommandError(f"cannot serve: {exc}") from exc

    def announce(self, service: str, host: str, port: int) -> None:
        """Print a bound address on stdout (scripts and tests wait for these lines)."""
        if service == "web":
            url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
            self.stdout.write(f"CoreMQ web app on {url}")
        else:
            self.stdout.write(f"CoreMQ broker listening on {host}:{port} (TCP)")
        self.stdout.flush()


def _given(value: int | None, default: int) -> int:
    return default if value is None else value
