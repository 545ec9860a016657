"""Load for the flow-control tests: a full-speed publisher and checking subscribers, each in its own process.

They speak the wire format over raw sockets, like the independent load
generator of issue 12, so that the test sees exactly what the broker does:
the publisher writes pre-encoded frames as fast as the broker takes them
(and reads its replies all the while), a subscriber reads as fast as it can
and checks every delivery (ids 1, 2, 3, ... and the publisher's own
numbering inside). Results come back as a dict through a pipe.

Import it as ``import flowload`` (tests/ is on sys.path); the process targets
are module-level functions, so the ``spawn`` start method can find them.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import threading
import time
from typing import Any

__all__ = ["Worker", "publisher", "subscriber", "PAD"]

#: The padding of each message: with ``{"n":1234567,"p":"..."}`` around it, about 100 bytes of JSON.
PAD = "x" * 80
_ID = b'"coremq_id":'


class Worker:
    """A load process (``spawn``) whose result dict is read from a pipe."""

    def __init__(self, target: Any, *args: Any, **kwargs: Any) -> None:
        context = multiprocessing.get_context("spawn")
        self._receiver, sender = context.Pipe(duplex=False)
        self._ready = context.Event()
        self.process = context.Process(target=target, args=(*args, sender, self._ready), kwargs=kwargs, daemon=True)
        self.process.start()
        sender.close()
        self.result: dict[str, Any] | None = None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the worker is connected (and subscribed)."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.process.name} was not ready within {timeout}s")

    def join(self, timeout: float) -> dict[str, Any]:
        """The worker's result; raise TimeoutError if it has none within ``timeout`` seconds."""
        if self.result is None:
            if not self._receiver.poll(timeout):
                self.process.kill()
                raise TimeoutError(f"{self.process.name} gave no result within {timeout}s")
            self.result = self._receiver.recv()
        self.process.join(5)
        return self.result

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)


class _Reader:
    """Frames from a socket: ``(queue, payload)`` pairs, with queue and JSON as bytes."""

    def __init__(self, sock: socket.socket, size: int = 1 << 20) -> None:
        self.sock = sock
        self.size = size  # bytes per recv
        self.data = bytearray()
        self.pending: list[tuple[bytes, bytes]] = []
        self.closed = ""  # why the connection ended, once it has

    def read(self) -> list[tuple[bytes, bytes]]:
        """The next whole frames (at least one, unless the connection ended: then [])."""
        if self.pending:
            frames, self.pending = self.pending, []
            return frames
        data = self.data
        while True:
            frames = []
            position = 0
            while True:
                space = data.find(b" ", position)
                if space < 0:
                    break
                end = space + 1 + int(data[position + 1 : space])
                if end > len(data):
                    break
                split = data.index(b" ", space + 1)
                frames.append((bytes(data[space + 1 : split]), bytes(data[split + 1 : end])))
                position = end
            del data[:position]
            if frames:
                return frames
            try:
                chunk = self.sock.recv(self.size)
            except OSError as exc:
                self.closed = f"{type(exc).__name__}: {exc}"
                return []
            if not chunk:
                self.closed = "EOF"
                return []
            data += chunk


def _connect(host: str, port: int) -> tuple[socket.socket, _Reader, bytes]:
    sock = socket.create_connection((host, port))
    reader = _Reader(sock)
    frames = reader.read()
    own, welcome = frames[0]
    assert json.loads(welcome)["response"].startswith("OK: Welcome"), welcome
    reader.pending = frames[1:]
    return sock, reader, own


def _frame(queue: bytes, body: bytes) -> bytes:
    return b"+%d %s %s" % (len(queue) + 1 + len(body), queue, body)


def _control(sock: socket.socket, reader: _Reader, own: bytes, request: dict) -> dict:
    sock.sendall(_frame(own, json.dumps(request).encode()))
    while True:
        for queue, payload in reader.read() or [(b"", b'{"response": "closed"}')]:
            if queue in (own, b""):
                return json.loads(payload)


def subscriber(host: str, port: int, queue: str, count: int, stop_after: float, result: Any, ready: Any,
               pace: float = 0.0) -> None:
    """Subscribe to ``queue`` and read ``count`` deliveries as fast as possible, checking each.

    With ``pace``, it reads slowly instead: 16 KiB per read, ``pace`` seconds apart.

    Result: ``received``, ``error`` (the first wrong delivery, or why it
    stopped early), ``other`` (frames on its own id queue: errors, BYE),
    ``closed`` (how the connection ended, if it did), ``seconds``.
    """
    sock, reader, own = _connect(host, port)
    reply = _control(sock, reader, own, {"coremq_subscribe": [queue]})
    assert reply["response"] == "OK: Subscribe successful", reply
    if pace:
        reader.size = 16 * 1024
    ready.set()
    name = queue.encode()
    expected = 1
    error = ""
    other: list[Any] = []
    started = time.monotonic()
    deadline = started + stop_after
    while expected <= count and not error:
        if pace:
            time.sleep(pace)
        frames = reader.read()
        if not frames:
            error = f"connection ended after {expected - 1} deliveries: {reader.closed}"
            break
        for frame_queue, payload in frames:
            if frame_queue != name:
                other.append(json.loads(payload))
                continue
            at = payload.rfind(_ID)
            message_id = int(payload[at + len(_ID) : -1])
            n = int(payload[5 : payload.index(b",", 5)])  # {"n":<n>,...
            if message_id != expected or n != expected - 1:
                error = f"delivery {expected}: got id {message_id} carrying n={n}"
                break
            expected += 1
        if time.monotonic() > deadline:
            error = error or f"only {expected - 1} deliveries within {stop_after}s"
    result.send({"received": expected - 1, "error": error, "other": other[:20], "closed": reader.closed,
                 "seconds": time.monotonic() - started})
    sock.close()


def publisher(host: str, port: int, queue: str, count: int, stop_after: float, result: Any, ready: Any) -> None:
    """Publish ``count`` messages to ``queue`` as fast as the broker takes them, reading every reply meanwhile.

    Result: ``sent`` (messages written), ``acks`` (``OK: Message sent``
    replies, checked to answer requests 1, 2, 3, ... with ids 1, 2, 3, ...),
    ``error``, ``other`` (other replies), ``acks_before_bye`` (the acks
    counted when a BYE came, or None), ``closed``, ``max_gap`` (the longest
    time, in seconds, between two replies while publishing) and ``max_gap_at`` (the acks before it),
    ``seconds``.
    """
    sock, reader, own = _connect(host, port)
    ready.set()
    name = queue.encode()
    state: dict[str, Any] = {"acks": 0, "error": "", "other": [], "max_gap": 0.0, "max_gap_at": 0, "bye": None}
    done = threading.Event()

    def read_replies() -> None:
        last = time.monotonic()
        while state["acks"] < count and not state["error"]:
            frames = reader.read()
            if not frames:
                state["error"] = f"connection ended after {state['acks']} acks: {reader.closed}"
                break
            now = time.monotonic()
            if now - last > state["max_gap"]:
                state["max_gap"], state["max_gap_at"] = now - last, state["acks"]
            last = now
            for frame_queue, payload in frames:
                reply = json.loads(payload)
                if frame_queue != own or reply.get("response") != "OK: Message sent":
                    state["other"].append(reply)
                    if reply.get("response") == "BYE" and state["bye"] is None:
                        state["bye"] = state["acks"]
                    continue
                acks = state["acks"] + 1
                if reply.get("request") != acks or reply.get("id") != acks:
                    state["error"] = f"ack {acks}: {reply}"
                    break
                state["acks"] = acks
        done.set()

    thread = threading.Thread(target=read_replies, daemon=True)
    thread.start()
    started = time.monotonic()
    sent = 0
    block = 10_000
    template = [_frame(name, b'{"n":%d,"p":"%s"}' % (n, PAD.encode())) for n in range(block)]
    try:
        while sent < count and not done.is_set():
            n = min(block, count - sent)
            if sent == 0:
                chunk = b"".join(template[:n])
            else:
                chunk = b"".join(_frame(name, b'{"n":%d,"p":"%s"}' % (i, PAD.encode()))
                                 for i in range(sent, sent + n))
            sock.sendall(chunk)
            sent += n
    except OSError as exc:
        state["error"] = state["error"] or f"sending failed after {sent} messages: {exc}"
    done.wait(max(0.0, stop_after - (time.monotonic() - started)))
    result.send({"sent": sent, "acks": state["acks"], "error": state["error"] or ("" if done.is_set() else
                 f"only {state['acks']} acks within {stop_after}s"), "other": state["other"][:20],
                 "acks_before_bye": state["bye"], "closed": reader.closed, "max_gap": state["max_gap"],
                 "max_gap_at": state["max_gap_at"], "seconds": time.monotonic() - started})
    sock.close()
