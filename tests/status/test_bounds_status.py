"""The resource bounds' counters on the status page, status.json and /metrics: run_coremq with small bounds.

Settings in bounds_settings.py (a first frame within 0.5 s, 3 anonymous connections per
address, 20 queues, 40,000 bytes of history); the clients connect from 127.0.0.3 and
127.0.0.4 so that the web process's own clients on 127.0.0.1 are not counted with them.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families

from coremq_client.codec import encode_frame
from status_site import STAFF, TOKEN, WAIT, Server, Site, log_in, port_of, process_env
from wire import RawClient


@pytest.fixture(scope="module")
def bounded_site(database: Path) -> Iterator[Site]:
    """``run_coremq`` with the small bounds of bounds_settings.py, after each bound was hit once."""
    server = Server([sys.executable, "manage.py", "run_coremq", "--port", "0", "--web-port", "0"],
                    process_env(database, DJANGO_SETTINGS_MODULE="bounds_settings"))
    try:
        site = Site(port_of(server.wait_for("CoreMQ broker listening on")),
                    port_of(server.wait_for("CoreMQ web app on")), database)
        hit_every_bound(site.broker_port)
        yield site
    finally:
        server.stop()


def hit_every_bound(port: int) -> None:
    silent = RawClient("127.0.0.1", port, source="127.0.0.3")
    talker = RawClient("127.0.0.1", port, source="127.0.0.3")  # 2 of 3 from that address: scarce
    assert talker.control({"coremq_options": {}})["response"].startswith("OK")
    assert silent.read_until_closed() == [
        (silent.id, {"response": "ERROR: timeout: no frame within 0.5 seconds of the welcome", "code": "timeout"})]
    clients = [RawClient("127.0.0.1", port, source="127.0.0.4") for _ in range(3)]
    refused = RawClient("127.0.0.1", port, source="127.0.0.4", read_welcome=False)
    assert [reply for _, reply in refused.read_until_closed()] == [
        {"response": "ERROR: too many connections from 127.0.0.4: limit is 3", "code": "too_many_connections"}]
    client = clients[0]
    assert client.control({"coremq_subscribe": [f"q{n}" for n in range(21)]})["response"] == (
        "ERROR: too many queues: limit is 20")
    client.send_raw(b"".join(encode_frame("h", json.dumps({"n": n, "pad": "x" * 1000}).encode()) for n in range(60)))
    assert [client.read()[1]["id"] for _ in range(60)] == list(range(1, 61))
    paged = client.control({"coremq_gethistory": ["h"], "limit": 5})  # a reply cut short: history_pages
    assert len(paged["history"]["h"]) == 5 and paged["more"] == {"h": True}
    client.send("big", {"pad": "x" * 16_300})  # fits a frame; with its stamps, no history reply: history_skipped
    assert client.read()[1]["id"] == 1
    assert client.control({"coremq_gethistory": ["big"]})["history"] == {"big": []}
    assert client.control({"coremq_subscribe": ["idle"]})["response"] == "OK: Subscribe successful"
    assert client.control({"coremq_unsubscribe": ["idle"]})["response"] == "OK: Unsubscribe successful"
    for other in clients:
        other.close()


def metrics(site: Site) -> dict[str, float]:
    status, _, body = site.get("/metrics", token=TOKEN)
    assert status == 200, body
    return {sample.name: sample.value for family in text_string_to_metric_families(body)
            for sample in family.samples if not sample.labels}


def test_status_json_and_metrics_count_every_bound(bounded_site: Site) -> None:
    """status.json and /metrics count a timeout, a refusal per address, a refused queue and history evicted under the limit."""
    broker = bounded_site.status()["broker"]
    assert broker["timeouts"] == 1 and broker["refused_per_address"] == 1 and broker["queues_refused"] == 1
    assert broker["history_evicted"] > 0 and 0 < broker["history_bytes"] <= broker["history_bytes_limit"] == 40_000
    samples = metrics(bounded_site)
    assert samples["coremq_timeouts_total"] == 1 and samples["coremq_refused_per_address_total"] == 1
    assert samples["coremq_queues_refused_total"] == 1
    assert samples["coremq_history_evicted_total"] == broker["history_evicted"]
    assert samples["coremq_history_limit_bytes"] == 40_000 and 0 < samples["coremq_history_bytes"] <= 40_000
    assert broker["history_pages"] == samples["coremq_history_pages_total"] == 1
    assert broker["history_skipped"] == samples["coremq_history_skipped_total"] == 1


def test_page_shows_the_bounds(page, bounded_site: Site) -> None:
    """The status page's cards show the history held against its limit, its pages, the timeouts, the refusals and the queues forgotten."""
    evicted = bounded_site.status()["broker"]["history_evicted"]
    log_in(page, bounded_site, STAFF)
    expect(page.locator('[data-field="timeouts"]')).to_have_text("1", timeout=WAIT)
    expect(page.locator('[data-field="bounds_refused"]')).to_have_text("2")
    expect(page.locator('[data-field="bounds_detail"]')).to_have_text("1 per address, 1 new queue")
    expect(page.locator('[data-field="history_bytes"]')).to_have_text(re.compile(r"^\d+(\.\d)? KiB$"))
    expect(page.locator('[data-field="history_detail"]')).to_have_text(
        f"of 39.1 KiB, {evicted} evicted, 1 replies paged, 1 too large")
    forgotten = bounded_site.status()["broker"]["queues_forgotten"]  # "idle" (and any other queue emptied)
    assert forgotten >= 1
    expect(page.locator('[data-field="queues_detail"]')).to_have_text(f"of 20, {forgotten} forgotten")
