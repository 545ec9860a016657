"""The cluster on the status page, ``status.json`` and ``/metrics``: three run_coremq nodes on one redis-server.

Node a serves the web app too (``run_coremq --redis ... --web-port 0``); b and c are ``--no-web``.
The page is read in Chromium by a staff user.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "status"))

from playwright.sync_api import expect  # noqa: E402

from coremq_client.sync_client import MessageQueue  # noqa: E402
from redis_servers import RedisServer  # noqa: E402
from status_site import (  # noqa: E402
    CHROMIUM_ARGS, STAFF, TOKEN, WAIT, Server, Site, cell, log_in, manage, port_of, process_env,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, dict[str, int]]]:
    """The site of node a, and the broker port of every node."""
    database = tmp_path_factory.mktemp("cluster-status") / "db.sqlite3"
    manage(database, "migrate", "--noinput")
    manage(database, "createsuperuser", "--noinput", "--username", STAFF[0], "--email", "staff@example.com",
           DJANGO_SUPERUSER_PASSWORD=STAFF[1])
    redis = RedisServer()
    servers: list[Server] = []
    try:
        ports: dict[str, int] = {}
        web_port = 0
        for name in ("a", "b", "c"):
            web = ["--web-port", "0"] if name == "a" else ["--no-web"]
            server = Server([sys.executable, "manage.py", "run_coremq", "--port", "0", "--no-memcached", *web,
                             "--redis", redis.url, "--node-name", name], process_env(database))
            servers.append(server)
            ports[name] = port_of(server.wait_for("CoreMQ broker listening on"))
            if name == "a":
                web_port = port_of(server.wait_for("CoreMQ web app on"))
        yield Site(ports["a"], web_port, database), ports
    finally:
        for server in servers:
            server.stop()
        redis.close()


def nodes_listed(site: Site, count: int) -> dict:
    """status.json once it lists ``count`` nodes (heartbeats come every 2 s)."""
    deadline = time.monotonic() + 30
    while True:
        snapshot = site.status()
        if len(snapshot.get("cluster", {}).get("nodes", [])) == count:
            return snapshot
        assert time.monotonic() < deadline, snapshot.get("cluster")
        time.sleep(0.3)


def test_status_json_lists_every_node_with_totals(cluster_site: tuple[Site, dict[str, int]]) -> None:
    site, ports = cluster_site
    clients = [MessageQueue("127.0.0.1", ports["b"]), MessageQueue("127.0.0.1", ports["b"]),
               MessageQueue("127.0.0.1", ports["c"])]
    for mq in clients:
        mq.connect()
    try:
        deadline = time.monotonic() + 30
        while True:  # b's next heartbeat carries its two clients
            cluster = nodes_listed(site, 3)["cluster"]
            by_name = {node["name"]: node for node in cluster["nodes"]}
            if by_name["b"]["connections"] == 2 and by_name["c"]["connections"] == 1:
                break
            assert time.monotonic() < deadline, cluster
            time.sleep(0.3)
        assert cluster["node"] == "a" and cluster["state"] == "ok"
        assert [node["name"] for node in cluster["nodes"]] == ["a", "b", "c"]
        assert [node["self"] for node in cluster["nodes"]] == [True, False, False]
        assert {name: node["address"] for name, node in by_name.items()} == {
            name: f"127.0.0.1:{port}" for name, port in ports.items()}
        assert all(node["uptime"] > 0 and node["queues"] is not None for node in cluster["nodes"])
        assert cluster["totals"]["nodes"] == 3
        assert cluster["totals"]["connections"] == sum(node["connections"] for node in cluster["nodes"])
    finally:
        for mq in clients:
            mq.close()


def test_metrics_carry_the_node_label(cluster_site: tuple[Site, dict[str, int]]) -> None:
    site, _ = cluster_site
    nodes_listed(site, 3)
    status, _, text = site.get("/metrics", token=TOKEN)
    assert status == 200
    assert 'coremq_up{node="a"} 1.0' in text
    assert 'coremq_cluster_up{node="a"} 1.0' in text
    assert 'coremq_cluster_nodes{node="a"} 3.0' in text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all('node="a"' in line for line in samples)
    assert "coremq_durable_up" not in text  # no SQLite store with the Redis engine


def test_status_page_shows_the_three_nodes(cluster_site: tuple[Site, dict[str, int]]) -> None:
    from playwright.sync_api import sync_playwright

    site, ports = cluster_site
    nodes_listed(site, 3)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            log_in(page, site, STAFF)
            expect(page.locator("#cmq-cluster")).to_be_visible(timeout=WAIT)
            for name in ("a", "b", "c"):
                expect(cell(page, "nodes", name, "address")).to_have_text(f"127.0.0.1:{ports[name]}", timeout=WAIT)
            expect(cell(page, "nodes", "a", "name")).to_have_text("a (answered)")
            expect(page.locator("#cmq-cluster-totals")).to_contain_text("3 nodes", timeout=WAIT)
            expect(page.locator('[data-field="durable_state"]')).to_have_text("In Redis", timeout=WAIT)
        finally:
            browser.close()


def test_a_single_node_shows_no_cluster(tmp_path: Path) -> None:
    """Without the Redis engine the snapshot has no ``cluster`` and /metrics no ``node`` label (unchanged)."""
    from coremq_broker.status.cluster import add_cluster
    from coremq_broker.status.metrics import render

    snapshot = {"source": "local", "broker": {"server": "s", "address": "h:1", "durable": {"state": "unused"}},
                "connections": [], "queues": []}
    assert "cluster" not in add_cluster(snapshot)
    assert b'node="' not in render(snapshot)




def test_browsers_on_the_web_node_and_tcp_clients_on_another(cluster_site: tuple[Site, dict[str, int]]) -> None:
    """A WebSocket client of node a's bridge (``<bridge id>/<n>``) and TCP clients of node b: fan-out both ways,
    point-to-point both ways, across the nodes."""
    site, ports = cluster_site
    url = f"ws://127.0.0.1:{site.web_port}/ws/coremq/"
    with MessageQueue(url, queues=["mixed"]) as browser, MessageQueue("127.0.0.1", ports["b"], queues=["mixed"]) as tcp:
        assert "/" in browser.connection_id  # a sub-address of node a's bridge connection
        with MessageQueue("127.0.0.1", ports["c"]) as publisher:
            publisher.publish("mixed", {"n": 1})
        for mq in (browser, tcp):
            delivery = mq.receive(timeout=10)
            assert delivery is not None and (delivery.queue, delivery.message["n"]) == ("mixed", 1)
        tcp.publish(browser.connection_id, {"to": "browser"})
        delivery = browser.receive(timeout=10)
        assert delivery is not None and delivery.message["to"] == "browser"
        assert delivery.message["coremq_sender"] == tcp.connection_id
        browser.publish(tcp.connection_id, {"to": "tcp"})
        delivery = tcp.receive(timeout=10)
        assert delivery is not None and delivery.queue == tcp.connection_id and delivery.message["to"] == "tcp"
