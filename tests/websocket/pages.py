"""Pages of a real server's origin running a coremq.js client, its events and messages recorded for the test."""

from __future__ import annotations

from typing import Any

__all__ = ["CLIENT", "client_page", "events", "settled"]

# A client of the page's own server: its events recorded in window.events, its sockets and dropped frames counted.
CLIENT = """(url) => {
    window.events = [];
    window.got = [];
    window.sockets = 0;
    window.droppedFrames = 0;
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
        constructor(...args) {
            super(...args);
            window.sockets += 1;
            this.addEventListener("message", (event) => {
                if (JSON.parse(event.data).type === "dropped") window.droppedFrames += 1;
            });
        }
    };
    window.mq = new CoreMQ(url, { minDelay: 20, maxDelay: 100 });
    for (const name of ["state", "close", "revoked", "gap", "reset"]) {
        mq.on(name, (value) => events.push([name, value]));
    }
    mq.subscribe("q", (message, meta) => got.push([meta.id, message, meta.replayed]));
}"""

#: True once the client is open, subscribed to q and done resuming it.
settled = "mq.state === 'open' && mq._queues.get('q').settled && !mq._queues.get('q').replay"


def client_page(new_page: Any, web_port: int, query: str = "", *, before: Any = None) -> Any:
    """A page of the server's origin with coremq.js loaded and a client of /ws/coremq/<query> made.

    ``before(page)`` runs before the client connects (to route its WebSocket, say).
    """
    page = new_page(f"http://127.0.0.1:{web_port}/static/coremq/coremq.js")
    if before is not None:
        before(page)
    page.add_script_tag(url="/static/coremq/coremq.js")
    page.evaluate(CLIENT, f"/ws/coremq/{query}")
    return page


def events(page: Any, name: str) -> list[Any]:
    return page.evaluate("(name) => events.filter(([n]) => n === name).map(([, v]) => v)", name)
