"""A peer for ``bench.websocket``: a bare Python server on the ``websockets`` package's ``broadcast()``.

Run by the benchmark as ``python -m bench.websockets_peer PORT``. No Django, no
history, no auth: the leanest fan-out a Python user could write on
``websockets``. It speaks the part of CoreMQ's browser protocol
(docs/websocket.md) that the benchmark uses, as :mod:`bench.channels_peer`
and ``bench/node/broadcast.js`` do:

- ``?queues=a,b`` in the URL, or ``{"action": "subscribe", "queues": [...], "ref": r}``,
  answered ``{"type": "subscribed", "queues": [...], "ref": r}``;
- ``{"action": "publish", "queue": q, "message": m, "ref": r}``: the delivery
  ``{"type": "message", "queue": q, "message": m}`` is encoded once and handed
  to ``websockets.broadcast()`` for every subscriber of ``q``; the publisher gets
  ``{"type": "published", "queue": q, "ref": r}``;
- anything else is answered ``{"type": "error", ...}``; the connection stays open.

Prints ``listening on HOST:PORT`` once it accepts connections. The event loop
is uvloop's when it is installed, as for CoreMQ.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve

__all__ = ["Fanout", "main"]


class Fanout:
    """Queue name → the connections subscribed to it."""

    def __init__(self) -> None:
        self.queues: dict[str, set[ServerConnection]] = {}

    def subscribe(self, connection: ServerConnection, names: list[str], mine: set[str]) -> None:
        for name in names:
            self.queues.setdefault(name, set()).add(connection)
            mine.add(name)

    def forget(self, connection: ServerConnection, mine: set[str]) -> None:
        for name in mine:
            members = self.queues.get(name)
            if members is not None:
                members.discard(connection)
                if not members:
                    del self.queues[name]

    async def handler(self, connection: ServerConnection) -> None:
        mine: set[str] = set()
        query = parse_qs(urlsplit(connection.request.path).query)  # type: ignore[union-attr]
        wanted = [name for value in query.get("queues", []) for name in value.split(",") if name]
        try:
            if wanted:
                self.subscribe(connection, wanted, mine)
                await connection.send(json.dumps({"type": "subscribed", "queues": wanted, "ref": None}))
            async for text in connection:
                answer = self.receive(connection, text, mine)
                await connection.send(json.dumps(answer))
        finally:
            self.forget(connection, mine)

    def receive(self, connection: ServerConnection, text: str | bytes, mine: set[str]) -> dict:
        """Carry out one request; return the answer for its sender."""
        try:
            request = json.loads(text) if isinstance(text, str) else None
        except ValueError as error:
            return {"type": "error", "error": f"invalid JSON: {error}", "ref": None}
        if not isinstance(request, dict):
            return {"type": "error", "error": "a request is a JSON object", "ref": None}
        ref, action = request.get("ref"), request.get("action")
        if action == "publish" and isinstance(request.get("queue"), str) and request["queue"] and "message" in request:
            queue = request["queue"]
            members = self.queues.get(queue)
            if members:
                broadcast(members, json.dumps({"type": "message", "queue": queue, "message": request["message"]}))
            return {"type": "published", "queue": queue, "ref": ref}
        names = request.get("queues")
        names = [names] if isinstance(names, str) else names
        if action == "subscribe" and isinstance(names, list) and names and all(isinstance(n, str) and n for n in names):
            self.subscribe(connection, names, mine)
            return {"type": "subscribed", "queues": names, "ref": ref}
        return {"type": "error", "error": f"unknown or malformed action: {action!r}", "ref": ref}


async def serve_forever(host: str, port: int) -> None:
    fanout = Fanout()
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    async with serve(fanout.handler, host, port) as server:
        bound = next(iter(server.sockets)).getsockname()
        print(f"listening on {bound[0]}:{bound[1]}", flush=True)
        await stop


def main(argv: list[str]) -> None:
    port = int(argv[0]) if argv else 0
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_forever(host, port))
    else:
        uvloop.run(serve_forever(host, port))


if __name__ == "__main__":
    main(sys.argv[1:])
