"""The servers under benchmark: where they listen, their process, their version.

CoreMQ is started by the harness (:mod:`bench.coremq_process`); the peers
are whatever already answers on this machine's standard ports (Redis 6379,
Mosquitto 1883, NATS 4222). A peer is used only if it answers its own
protocol there; its process is found by its listening port, so that its CPU
time and memory can be read with psutil.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from dataclasses import dataclass, field

import psutil

from .protocols import WIRES, Wire, _mqtt_connect, _mqtt_packet, _mqtt_string, _resp

__all__ = ["PEERS", "Target", "probe_peer", "probe_coremq", "listener_pid"]

PEERS = ("redis", "mqtt", "nats")
HOST = "127.0.0.1"


@dataclass
class Target:
    """One server: its protocol, port and process."""

    wire: Wire
    port: int
    pid: int
    version: str = ""
    _process: psutil.Process | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.wire.name

    @property
    def label(self) -> str:
        return self.wire.label

    @property
    def process(self) -> psutil.Process:
        if self._process is None:
            self._process = psutil.Process(self.pid)
        return self._process

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server process so far (all its threads)."""
        times = self.process.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self.process.memory_info().rss

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label, "port": self.port, "pid": self.pid, "version": self.version}


def listener_pid(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` on this machine, if it can be seen."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.AccessDenied:
        pass
    try:  # ss shows pids to root, like psutil; try it anyway
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"pid=(\d+)", out)
    return int(match.group(1)) if match else None


def _recv_until(sock: socket.socket, done: "re.Pattern[bytes] | bytes", limit: int = 1 << 16) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if (done in data) if isinstance(done, bytes) else done.search(data):
            break
    return data


def _probe_redis(sock: socket.socket) -> str:
    sock.sendall(_resp(b"INFO", b"server"))
    data = _recv_until(sock, re.compile(rb"redis_version:[^\r]*\r\n"))
    match = re.search(rb"redis_version:([^\r]+)", data)
    if not match:
        raise ConnectionError(f"not Redis: {data[:60]!r}")
    return match.group(1).decode()


def _probe_nats(sock: socket.socket) -> str:
    data = _recv_until(sock, b"\r\n")
    if not data.startswith(b"INFO "):
        raise ConnectionError(f"not NATS: {data[:60]!r}")
    return str(json.loads(data[5:data.index(b"\r\n")]).get("version", "?"))


def _probe_mqtt(sock: socket.socket) -> str:
    sock.sendall(_mqtt_connect("cmqb-probe"))
    if sock.recv(4) != b"\x20\x02\x00\x00":
        raise ConnectionError("not an MQTT broker")
    topic = b"$SYS/broker/version"
    sock.sendall(_mqtt_packet(0x82, b"\x00\x01" + _mqtt_string(topic) + b"\x00"))
    sock.settimeout(1.0)
    try:
        data = _recv_until(sock, re.compile(rb"mosquitto version [\d.]+"))
    except socket.timeout:
        return "?"
    finally:
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    match = re.search(rb"mosquitto version ([\d.]+)", data)
    return match.group(1).decode() if match else "?"


def probe_coremq(port: int, timeout: float = 5.0) -> str:
    """The version a CoreMQ broker on ``port`` gives in its welcome."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"no welcome from CoreMQ on port {port}: {data[:80]!r}")
            data += chunk
            space = data.find(b" ")
            if space > 0 and len(data) >= space + 1 + int(data[1:space]):
                break
    body = data[space + 1:space + 1 + int(data[1:space])].partition(b" ")[2]
    return str(json.loads(body).get("version", "?"))


_PROBES = {"redis": _probe_redis, "nats": _probe_nats, "mqtt": _probe_mqtt}


def probe_peer(name: str, timeout: float = 2.0) -> tuple[Target | None, str]:
    """``(target, "")`` if the peer ``name`` answers on its port here, else ``(None, why)``."""
    wire = WIRES[name]()
    try:
        with socket.create_connection((HOST, wire.port), timeout=timeout) as sock:
            version = _PROBES[name](sock)
    except (OSError, ValueError) as exc:
        return None, f"{wire.label} does not answer on {HOST}:{wire.port} ({exc})"
    pid = listener_pid(wire.port)
    if pid is None:
        return None, f"{wire.label} answers on port {wire.port}, but its process cannot be found"
    return Target(wire, wire.port, pid, version), ""
