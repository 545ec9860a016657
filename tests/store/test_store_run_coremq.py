"""``manage.py run_coremq`` serves the store over the memcached protocol beside the broker."""

from __future__ import annotations

import os
import re
import socket
import sys

from pymemcache.client.base import Client

from brokers import BrokerThread
from coremq_broker.core.config import BrokerConfig
from coremq_broker.store.config import StoreConfig
from coremq_broker.transports.memcached import MemcachedService
from servers import ROOT, ServerProcess


def _run_coremq(tmp_path, *args: str) -> ServerProcess:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
           "COREMQ_DATABASE": str(tmp_path / "db.sqlite3"), "PYTHONUNBUFFERED": "1"}
    return ServerProcess([sys.executable, "manage.py", "run_coremq", *args], env)


def test_run_coremq_serves_memcached_on_an_ephemeral_port(tmp_path):
    """--memcached-port 0 binds a free port on the broker's host, prints it, and answers memcached clients."""
    server = _run_coremq(tmp_path, "--port", "0", "--no-web", "--memcached-port", "0")
    try:
        line = server.wait_for("CoreMQ store (memcached protocol) listening on")
        server.wait_for("CoreMQ broker listening on")
        host, port = re.search(r"on (\S+):(\d+)", line).groups()
        assert host == "127.0.0.1"
        client = Client((host, int(port)), default_noreply=False)
        assert client.set("k", b"v") is True and client.get("k") == b"v"
        assert client.version() == b"1.6.18"
        client.close()
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_run_coremq_no_memcached(tmp_path):
    """--no-memcached serves the broker alone."""
    server = _run_coremq(tmp_path, "--port", "0", "--no-web", "--no-memcached")
    try:
        server.wait_for("CoreMQ broker listening on")
    finally:
        server.stop()
    assert not any("memcached protocol" in line for line in server.output)



def test_taken_port(tmp_path):
    """A --memcached-port that is taken stops run_coremq with 'cannot serve'; the default port, if taken,
    is announced as unavailable and the broker serves on (MemcachedService(required=False))."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = _run_coremq(tmp_path, "--port", "0", "--no-web", "--memcached-port", str(port))
        server.process.wait(60)
        assert server.process.returncode != 0 and "cannot serve" in "".join(server.output)
        broker = BrokerThread(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=1.0))
        announced = []
        service = MemcachedService(StoreConfig(), port=port, required=False,
                                   announce=lambda *args: announced.append(args))
        try:
            stop = broker.call(lambda: service.attach(broker.broker))
            assert announced == [("memcached-unavailable", "127.0.0.1", port)]
            broker.call(stop)
        finally:
            broker.stop()


def test_status_json_and_metrics_show_the_store(tmp_path):
    """Under run_coremq, status.json has the store's items, bytes, hits, misses, evictions and connections,
    and /metrics their coremq_store_* series."""
    import json
    import urllib.request

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "status_settings", "COREMQ_TEST_STATUS_TOKEN": "store-token",
           "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "tests", "status"), os.path.join(ROOT, "tests")]),
           "COREMQ_DATABASE": str(tmp_path / "db.sqlite3"), "PYTHONUNBUFFERED": "1"}
    server = ServerProcess([sys.executable, "manage.py", "run_coremq", "--port", "0", "--web-port", "0"], env)
    try:
        memcached_port = int(re.search(r":(\d+)$", server.wait_for("memcached protocol) listening").strip()).group(1))
        web = re.search(r"(http://\S+/)", server.wait_for("CoreMQ web app on")).group(1)
        client = Client(("127.0.0.1", memcached_port), default_noreply=False)
        client.set("a", b"12345")
        assert client.get("a") == b"12345" and client.get("b") is None

        def fetch(path: str) -> bytes:
            request = urllib.request.Request(web + path, headers={"Authorization": "Bearer store-token"})
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read()

        store = json.loads(fetch("coremq/status.json"))["store"]
        assert store["items"] == 1 and store["hits"] == 1 and store["misses"] == 1 and store["evictions"] == 0
        assert store["connections"] == 1 and store["bytes"] == 1 + 5 + 59 and store["limit_bytes"] == 64 * 2**20
        metrics = fetch("metrics").decode()
        assert "coremq_store_items 1.0" in metrics and "coremq_store_hits_total 1.0" in metrics
        client.close()
    finally:
        server.stop()
