"""The command line: ``python -m coremq_client {sub,pub,history,status} ...``.

Every command prints JSON on stdout, one value per line; notices go to
stderr. Exit status: 0 on success (and when ``sub`` is stopped with Ctrl-C),
1 when the broker refused or could not be reached, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence, TextIO

from .codec import DEFAULT_PORT
from .errors import CoreMQError
from .sync_client import MessageQueue

__all__ = ["build_parser", "main"]


def _json_argument(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); quote a string as '\"text\"'") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coremq_client", description="Talk to a CoreMQ broker.")
    parser.add_argument("--host", default="127.0.0.1", help="broker host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="broker port (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)

    sub = commands.add_parser("sub", help="print messages from queues as JSON lines until Ctrl-C")
    sub.add_argument("queues", nargs="+", metavar="QUEUE")
    sub.add_argument("--count", type=int, default=None, metavar="N", help="exit after N messages")

    pub = commands.add_parser("pub", help="publish a JSON object, array or string; print the reply")
    pub.add_argument("queue", metavar="QUEUE")
    pub.add_argument("message", type=_json_argument, metavar="JSON")

    history = commands.add_parser("history", help="print the stored messages of queues")
    history.add_argument("queues", nargs="+", metavar="QUEUE")
    history.add_argument("--since", type=int, default=None, metavar="ID", help="only messages with a higher id")

    commands.add_parser("status", help="print the broker's status")
    return parser


def _print(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")
    out.flush()


def _subscribe(client: MessageQueue, count: int | None, out: TextIO) -> None:
    print(f"# subscribed to {', '.join(client.queues)} as {client.connection_id}", file=sys.stderr, flush=True)
    received = 0
    while count is None or received < count:
        delivery = client.receive()
        assert delivery is not None
        _print({"queue": delivery.queue, "message": delivery.message}, out)
        received += 1


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    queues = args.queues if args.command == "sub" else ()
    client = MessageQueue(args.host, args.port, queues=queues, timeout=args.timeout, connect_timeout=args.timeout)
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
    except CoreMQError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if args.command == "sub" else 130
    return 0
