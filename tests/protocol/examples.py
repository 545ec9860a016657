"""The example sessions of ``docs/protocol.md`` and ``docs/websocket.md``, played against a real broker.

The docs mark the examples that must be true byte for byte with a fenced
block whose info string is ``coremq-session`` (TCP) or ``coremq-websocket``
(the browser protocol). Each line is one frame:

- TCP: ``C: <bytes>`` are sent by a client as written; ``S: +<N> <queue> <json>``
  is the next frame the broker sends that client, compared byte for byte,
  length included; ``S: closed`` means the broker closes the connection.
  ``C2:``/``S2:`` (any suffix) are a second client, connected when first named.
  A client's first ``S:`` line is its welcome: the connection id it shows
  stands for the real one (UUIDs have one length, so lengths hold).
- WebSocket: ``B: <json>`` is sent by a browser, ``W: <json>`` is the next
  frame it receives, compared as JSON (members and their order).

Values that change from run to run are taken from the doc before comparing:
the connection ids, and :data:`TCP_VARIABLE` / :data:`WS_VARIABLE` members.
A TCP frame's length is then that of the frame shown, so the doc's ``N``
must be its own payload's length in bytes.

Run ``python tests/protocol/examples.py`` to rewrite the server's lines of
both docs from a real session (after a deliberate change of the protocol).
"""

from __future__ import annotations

import json
import re
import socket
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coremq_client.codec import FrameParser, encode_frame
from coremq_client.errors import ProtocolError

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"
WEBSOCKET_DOC = ROOT / "docs" / "websocket.md"

#: Members of TCP frames whose values vary between runs: the doc's values stand in for the broker's.
TCP_VARIABLE = ("coremq_sent", "coremq_server", "version")
#: The same for browser frames (at any depth).
WS_VARIABLE = frozenset({"epoch", "sent", "version"})

_BLOCK = re.compile(r"^```(coremq-session|coremq-websocket)\n(.*?)^```", re.S | re.M)
_LINE = re.compile(r"^([A-Z])(\w*): ?(.*)$")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_SCALAR = r'("(?:[^"\\]|\\.)*"|[-+0-9.eE]+|true|false|null)'


@dataclass(frozen=True)
class Line:
    """One frame of an example: who (``C``/``S`` or ``B``/``W``), which party (the suffix), the text."""

    role: str
    party: str
    text: str
    number: int  # the doc's line number, for messages


@dataclass(frozen=True)
class Example:
    kind: str  # "coremq-session" or "coremq-websocket"
    lines: tuple[Line, ...]
    start: int  # the doc's line number of the first frame


def examples(path: Path) -> list[Example]:
    """Every marked example block of the markdown file ``path``."""
    text = path.read_text()
    found = []
    for match in _BLOCK.finditer(text):
        first = text.count("\n", 0, match.start(2)) + 1
        lines = []
        for offset, raw in enumerate(match[2].splitlines()):
            if not raw.strip():
                continue
            parsed = _LINE.match(raw)
            assert parsed, f"{path.name}:{first + offset}: not a frame line: {raw!r}"
            lines.append(Line(parsed[1], parsed[2], parsed[3], first + offset))
        found.append(Example(match[1], tuple(lines), first))
    return found


# -- TCP -----------------------------------------------------------------------------------


class _Client:
    """A raw TCP connection that reads whole frames as the bytes they came in."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.parser = FrameParser(max_frame_size=2**31)
        self.pending: list[bytes] = []
        self.welcomed = False

    def read(self) -> bytes | None:
        """The next frame's bytes as sent (``+N queue json``), or None when the broker closed."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.parser.receive_data(data)
            for event in self.parser.events():
                if isinstance(event, ProtocolError):
                    raise event
                self.pending.append(encode_frame(*event))  # a parsed frame re-encoded is its wire bytes
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def normalise_tcp(actual: bytes, expected: str, ids: dict[str, str]) -> str:
    """``actual`` with the real connection ids and the :data:`TCP_VARIABLE` values of ``expected``."""
    text = actual.decode()
    for real, shown in ids.items():
        text = text.replace(real, shown)
    for key in TCP_VARIABLE:
        shown = re.search(rf'"{key}":{_SCALAR}', expected)
        if shown is not None:
            text = re.sub(rf'"{key}":{_SCALAR}', lambda _: shown[0], text)
    queue, _, body = text.split(" ", 1)[1].partition(" ")
    return encode_frame(queue, body.encode()).decode()  # the length of the frame as shown


def play_tcp(example: Example, port: int) -> list[tuple[Line, str]]:
    """Play a ``coremq-session``; return each server line with what the broker sent in its place."""
    clients: dict[str, _Client] = {}
    ids: dict[str, str] = {}  # real connection id -> the doc's
    results = []
    try:
        for line in example.lines:
            client = clients.get(line.party)
            if client is None:
                client = clients[line.party] = _Client(port)
            if line.role == "C":
                data = line.text.encode()
                for real, shown in ids.items():
                    data = data.replace(shown.encode(), real.encode())
                client.sock.sendall(data)
                continue
            assert line.role == "S", f"line {line.number}: a TCP example has C and S lines"
            frame = client.read()
            if frame is None:
                results.append((line, "closed"))
                continue
            if not client.welcomed:  # the welcome: its id stands for this connection's
                client.welcomed = True
                shown_id, real_id = _UUID.search(line.text), _UUID.search(frame.decode())
                if shown_id and real_id:
                    ids[real_id[0]] = shown_id[0]
            results.append((line, normalise_tcp(frame, line.text, ids)))
    finally:
        for client in clients.values():
            client.close()
    return results


# -- WebSocket ------------------------------------------------------------------------------


def normalise_ws(actual: Any, expected: Any) -> Any:
    """``actual`` with the :data:`WS_VARIABLE` members' values of ``expected``, at any depth."""
    if isinstance(actual, dict) and isinstance(expected, dict):
        return {key: expected[key] if key in WS_VARIABLE and key in expected else
                normalise_ws(value, expected.get(key)) for key, value in actual.items()}
    if isinstance(actual, list) and isinstance(expected, list):
        return [normalise_ws(value, expected[index] if index < len(expected) else None)
                for index, value in enumerate(actual)]
    return actual


def play_websocket(example: Example, web_port: int) -> list[tuple[Line, str]]:
    """Play a ``coremq-websocket`` example with real WebSocket clients; each W line with what came."""
    from websockets.sync.client import connect

    sockets: dict[str, Any] = {}
    ids: dict[str, str] = {}
    results = []
    with ExitStack() as stack:
        for line in example.lines:
            ws = sockets.get(line.party)
            if ws is None:
                ws = sockets[line.party] = stack.enter_context(connect(
                    f"ws://127.0.0.1:{web_port}/ws/coremq/", origin=f"http://127.0.0.1:{web_port}",  # type: ignore[arg-type]
                    open_timeout=30))
            if line.role == "B":
                text = line.text
                for real, shown in ids.items():
                    text = text.replace(shown, real)
                ws.send(text)
                continue
            assert line.role == "W", f"line {line.number}: a WebSocket example has B and W lines"
            received = ws.recv(timeout=10)
            expected = json.loads(line.text)
            frame = json.loads(received)
            if frame.get("type") == "welcome" and isinstance(expected, dict):
                ids[frame["connection_id"]] = expected.get("connection_id", frame["connection_id"])
            for real, shown in ids.items():
                received = received.replace(real, shown)
            results.append((line, json.dumps(normalise_ws(json.loads(received), expected), ensure_ascii=False,
                                             separators=(",", ":"))))
    return results


def same_ws(shown: str, actual: str) -> bool:
    """Equal JSON objects, members in the same order."""
    def items(value: Any) -> Any:
        if isinstance(value, dict):
            return [(key, items(item)) for key, item in value.items()]
        if isinstance(value, list):
            return [items(item) for item in value]
        return value
    return items(json.loads(shown)) == items(json.loads(actual))


# -- rewriting the docs ---------------------------------------------------------------------


def _compact(text: str) -> str:
    """JSON as the server writes it: no blanks between tokens."""
    return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))



def rewrite(path: Path, port: int, web_port: int) -> int:
    """Replace each server line of ``path``'s examples with what the broker sends; the number changed."""
    lines = path.read_text().splitlines(keepends=True)
    changed = 0
    for example in examples(path):
        if example.kind == "coremq-session":
            played = play_tcp(example, port)
        else:
            played = [(line, _compact(actual)) for line, actual in play_websocket(example, web_port)]
        for line, actual in played:
            new = f"{line.role}{line.party}: {actual}\n"
            if lines[line.number - 1] != new and not (example.kind == "coremq-websocket" and same_ws(line.text, actual)):
                lines[line.number - 1] = new
                changed += 1
    path.write_text("".join(lines))
    return changed


if __name__ == "__main__":
    import sys
    import tempfile

    sys.path[:0] = [str(ROOT / "tests"), str(Path(__file__).parent)]
    from project_servers import started_servers

    with tempfile.TemporaryDirectory() as directory, started_servers(Path(directory)) as (tcp, web):
        for doc in (PROTOCOL_DOC, WEBSOCKET_DOC):
            print(f"{doc.name}: {rewrite(doc, tcp, web)} lines rewritten")
