"""The durable history's state on the status page, status.json and /metrics: run_coremq on a real 2 MiB tmpfs.

A queue made durable in the admin writes to a tmpfs; filling the disk makes
the store unavailable (with its reason) and freeing it makes it OK again,
which the page, the JSON and the metrics show as they happen.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from playwright.sync_api import expect
from prometheus_client.parser import text_string_to_metric_families

from disks import fill, mounted_tmpfs
from screenshots import screenshot_path
from status_site import STAFF, TOKEN, WAIT, Server, Site, log_in, manage, port_of, process_env
from wire import RawClient

UNAVAILABLE = "ERROR: durable history unavailable: "
SCREENSHOT = screenshot_path("status-durable-unavailable.png")  # docs/img/ only under `make screenshots`


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2 MiB tmpfs for the durable history."""
    with mounted_tmpfs(tmp_path_factory.mktemp("durable") / "disk", size="2m") as mounted:
        yield mounted


@pytest.fixture(scope="module")
def durable_site(database: Path, disk: Path) -> Iterator[Site]:
    """``run_coremq`` with queues ``d.*`` made durable in the admin and DURABLE_PATH on the tmpfs."""
    manage(database, "shell", "-c", "from coremq_broker.models import QueueSetting; "
                                    "QueueSetting.objects.create(pattern='d.*', durable=True)")
    server = Server([sys.executable, "manage.py", "run_coremq", "--port", "0", "--web-port", "0"],
                    process_env(database, COREMQ_DURABLE_PATH=str(disk / "history.sqlite3")))
    try:
        broker_port = port_of(server.wait_for("CoreMQ broker listening on"))
        web_port = port_of(server.wait_for("CoreMQ web app on"))
        yield Site(broker_port, web_port, database)
    finally:
        server.stop()


def metrics(site: Site) -> dict[str, float]:
    status, _, body = site.get("/metrics", token=TOKEN)
    assert status == 200, body
    return {sample.name: sample.value for family in text_string_to_metric_families(body)
            for sample in family.samples if not sample.labels}


def wait_for_durable(site: Site, state: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while (durable := site.status()["broker"]["durable"])["state"] != state:
        if time.monotonic() > deadline:
            pytest.fail(f"status.json's durable state did not become {state!r}: {durable}")
        time.sleep(0.1)
    return durable


def publish(client: RawClient, queue: str, message: dict) -> dict:
    client.send(queue, message)
    return client.read()[1]


def test_status_json_and_metrics_follow_the_durable_store(durable_site: Site, disk: Path) -> None:
    """status.json and /metrics show unused, then ok, unavailable with the reason while the disk is full, ok once freed."""
    site = durable_site
    assert site.status()["broker"]["durable"]["state"] == "unused"
    assert "coremq_durable_up" not in metrics(site)
    client = RawClient("127.0.0.1", site.broker_port)
    assert publish(client, "d.orders", {"n": 0})["id"] == 1
    durable = site.status()["broker"]["durable"]
    assert durable["state"] == "ok" and durable["committed"] == 1 and durable["free_bytes"] > 0
    assert metrics(site)["coremq_durable_up"] == 1

    filler = fill(disk)
    try:
        assert publish(client, "d.orders", {"n": 1, "pad": "x" * 10_000})["response"].startswith(UNAVAILABLE)
        assert publish(client, "d.orders", {"n": 2})["response"].startswith(UNAVAILABLE)
        durable = site.status()["broker"]["durable"]
        assert durable["state"] == "unavailable" and "database or disk is full" in durable["error"]
        assert durable["since"] > 1.7e9
        samples = metrics(site)
        assert samples["coremq_durable_up"] == 0 and samples["coremq_durable_outages_total"] == 1
        assert samples["coremq_durable_messages_failed_total"] == 1
        assert samples["coremq_durable_publishes_refused_total"] == 1
    finally:
        filler.unlink()
    wait_for_durable(site, "ok")
    assert publish(client, "d.orders", {"n": 3})["id"] == 2
    assert metrics(site)["coremq_durable_messages_committed_total"] == 2
    client.close()


def test_page_shows_the_durable_store_failing_and_recovering(page, durable_site: Site, disk: Path) -> None:
    """The status page's durable card turns to Unavailable with the reason while the disk is full, and back to OK."""
    site = durable_site
    client = RawClient("127.0.0.1", site.broker_port)
    assert publish(client, "d.page", {"n": 0})["response"] == "OK: Message sent"
    log_in(page, site, STAFF)
    card = page.locator("#cmq-durable")
    expect(card.locator('[data-field="durable_state"]')).to_have_text("OK", timeout=WAIT)
    filler = fill(disk)
    try:
        assert publish(client, "d.page", {"n": 1, "pad": "x" * 10_000})["response"].startswith(UNAVAILABLE)
        expect(card.locator('[data-field="durable_state"]')).to_have_text("Unavailable", timeout=WAIT)
        expect(card.locator('[data-field="durable_detail"]')).to_have_text("database or disk is full")
        expect(card).to_have_class("cmq-card cmq-failing")
        page.locator(".cmq-cards").screenshot(path=str(SCREENSHOT))  # docs/reliability.md shows it
    finally:
        filler.unlink()
    expect(card.locator('[data-field="durable_state"]')).to_have_text("OK", timeout=WAIT)
    expect(card).to_have_class("cmq-card")
    assert publish(client, "d.page", {"n": 2})["response"] == "OK: Message sent"
    client.close()
