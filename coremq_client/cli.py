"""The command line: ``python -m coremq_client {sub,pub,history,status} ...``.

Every command prints JSON on stdout, one value per line; notices go to
stderr. Exit status: 0 on success (and when ``sub`` is stopped with Ctrl-C),
1 when the broker refused or could not be reached, 2 on bad usage (bad
arguments, or what the client refuses before sending: a bad queue name, a
message that is not an object, array or string). The connection options
(``--host``, ``--port``, ``--token``...) go before or after the command.

``--token``, or ``--username`` with ``--password`` (or the environment
variable ``COREMQ_PASSWORD``, which keeps it out of the process list), log
in; ``--tls`` connects over TLS, verifying the broker's certificate against
the system's authorities or ``--cafile``.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from typing import Any, Sequence, TextIO

from .codec import DEFAULT_PORT, validate_queue_name
from .errors import CoreMQError, InvalidQueueName, LocalUsageError
from .protocol import Gap, wrap
from .sync_client import MessageQueue

__all__ = ["build_parser", "main"]


def _json_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); quote a string as '\"text\"'") from None


def _add_connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The options that say where and how to connect.

    The main parser holds their defaults; each command's parser takes them
    again with no default, so ``pub --port 7000 q '{}'`` overrides the
    default and leaves an earlier ``--port`` alone when it is not repeated.
    """
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--host", default=default("127.0.0.1"), help="broker host (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default(DEFAULT_PORT),
                        help=f"broker port (default: {DEFAULT_PORT})")
    parser.add_argument("--timeout", type=float, default=default(5.0),
                        help="seconds to wait for a reply (default: 5.0)")
    login = parser.add_argument_group("logging in")
    login.add_argument("--token", default=default(None), help="an API token")
    login.add_argument("--username", default=default(None),
                       help="a user name; the password comes from --password or $COREMQ_PASSWORD")
    login.add_argument("--password", default=default(None),
                       help="the user's password (prefer $COREMQ_PASSWORD: arguments are visible to others)")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", default=default(False),
                     help="connect over TLS and verify the broker's certificate")
    tls.add_argument("--cafile", metavar="PEM", default=default(None),
                     help="trust the certificates in this file (implies --tls)")


def build_parser() -> argparse.ArgumentParser:
    """The parser; the connection options go before or after the command."""
    parser = argparse.ArgumentParser(prog="python -m coremq_client", description="Talk to a CoreMQ broker.")
    _add_connection_options(parser, defaults=True)
    command_options = argparse.ArgumentParser(add_help=False)
    _add_connection_options(command_options, defaults=False)
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser(
        "sub", parents=[command_options], help="print messages from queues as JSON lines until Ctrl-C")
    sub.add_argument("queues", nargs="+", metavar="QUEUE")
    sub.add_argument("--count", type=int, default=None, metavar="N", help="exit after N messages")

    pub = commands.add_parser(
        "pub", parents=[command_options], help="publish a JSON object, array or string; print the reply")
    pub.add_argument("queue", metavar="QUEUE")
    pub.add_argument("message", type=_json_argument, metavar="JSON")

    history = commands.add_parser(
        "history", parents=[command_options], help="print the stored messages of queues")
    history.add_argument("queues", nargs="+", metavar="QUEUE")
    history.add_argument("--since", type=int, default=None, metavar="ID", help="only messages with a higher id")

    commands.add_parser("status", parents=[command_options], help="print the broker's status")
    return parser


def _print(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    out.flush()


def _credentials(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """The login arguments for the client; exits with status 2 when they do not fit together."""
    password = args.password if args.password is not None else os.environ.get("COREMQ_PASSWORD")
    if args.token is not None:
        if args.username is not None:
            parser.error("give --token or --username, not both")
        return {"token": args.token}
    if args.username is not None:
        if password is None:
            parser.error("--username needs --password or the environment variable COREMQ_PASSWORD")
        return {"username": args.username, "password": password}
    if args.password is not None:
        parser.error("--password needs --username")
    return {}


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.cafile):
        return None
    return ssl.create_default_context(cafile=args.cafile)


def _report_gap(gap: Gap) -> None:
    if gap.reset:
        print(f"# queue {gap.queue} restarted its numbering: messages were lost", file=sys.stderr, flush=True)
    else:
        print(f"# queue {gap.queue}: messages {gap.first_missing}..{gap.last_missing} were lost",
              file=sys.stderr, flush=True)


def _subscribe(client: MessageQueue, count: int | None, out: TextIO) -> None:
    print(f"# subscribed to {', '.join(client.queues)} as {client.connection_id}", file=sys.stderr, flush=True)
    received = 0
    while count is None or received < count:
        delivery = client.receive()
        assert delivery is not None
        _print({"queue": delivery.queue, "message": delivery.message}, out)
        received += 1


def _check_locally(args: argparse.Namespace) -> None:
    """Raise what the client would refuse before anything is sent: bad queue names, unpublishable JSON."""
    for queue in getattr(args, "queues", None) or [getattr(args, "queue", None)]:
        if queue is not None:
            validate_queue_name(queue)
    if args.command == "pub":
        if args.message is None or isinstance(args.message, (bool, int, float)):
            kind = "null" if args.message is None else "a boolean" if isinstance(args.message, bool) else "a number"
            raise LocalUsageError(f"a message must be a JSON object, array or string, not {kind}")
        wrap(args.message)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    credentials = _credentials(parser, args)
    out = out or sys.stdout
    queues = args.queues if args.command == "sub" else ()
    try:
        _check_locally(args)
    except (InvalidQueueName, LocalUsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        tls = _tls_context(args)
    except OSError as exc:
        print(f"error: cannot read --cafile: {exc}", file=sys.stderr)
        return 2
    client = MessageQueue(args.host, args.port, queues=queues, timeout=args.timeout, connect_timeout=args.timeout,
                          ssl=tls, on_gap=_report_gap, **credentials)
    try:
        with client:
            if args.command == "sub":
                _subscribe(client, args.count, out)
            elif args.command == "pub":
                _print(client.send_message(args.queue, args.message), out)
            elif args.command == "history":
                _print(client.get_history(*args.queues, since=args.since), out)
            else:
                _print(client.status(), out)
    except (InvalidQueueName, LocalUsageError) as exc:  # e.g. a message over the broker's frame limit
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CoreMQError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if args.command == "sub" else 130
    return 0
