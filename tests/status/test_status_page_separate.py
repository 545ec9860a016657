"""End to end with the web app in its own daphne process: the page asks the broker over the protocol."""

from __future__ import annotations

from playwright.sync_api import expect

from coremq_client.sync_client import MessageQueue
from status_site import STAFF, TOKEN, WAIT, Site, cell, log_in


def test_page_reads_the_broker_over_the_protocol(page, separate_site: Site) -> None:
    """Served by daphne alone, the page shows the other process's clients and counts, live."""
    site = separate_site
    log_in(page, site, STAFF)
    expect(page.locator("#cmq-state")).to_have_text("Live", timeout=WAIT)
    expect(page.locator("#cmq-source")).to_have_text("over the protocol")
    expect(page.locator("#cmq-connections td", has_text="(this page)")).to_have_count(1, timeout=WAIT)
    page.evaluate("window.__sameDocument = true")
    with MessageQueue("127.0.0.1", site.broker_port) as publisher:
        expect(cell(page, "connections", publisher.connection_id, "transport")).to_have_text("tcp", timeout=WAIT)
        publisher.publish("remote-orders", {"n": 1})
        expect(cell(page, "queues", "remote-orders", "published")).to_have_text("1", timeout=WAIT)
        publisher.publish("remote-orders", {"n": 2})
        expect(cell(page, "queues", "remote-orders", "published")).to_have_text("2", timeout=WAIT)

        page.on("dialog", lambda dialog: dialog.accept())
        page.locator('#cmq-queues tr[data-id="remote-orders"] button[data-action="purge"]').click()
        expect(cell(page, "queues", "remote-orders", "history")).to_have_text("0 / 10", timeout=WAIT)
    assert page.evaluate("window.__sameDocument") is True


def test_json_and_metrics_from_the_other_process(separate_site: Site) -> None:
    """status.json and /metrics from daphne describe the broker process, asked over TCP."""
    site = separate_site
    with MessageQueue("127.0.0.1", site.broker_port) as publisher:
        publisher.publish("remote-json", {"x": 1})
        snapshot = site.status()
        assert snapshot["source"] == "remote"
        assert snapshot["broker"]["address"] == f"127.0.0.1:{site.broker_port}"
        ids = {c["id"] for c in snapshot["connections"]}
        assert {publisher.connection_id, snapshot["observer"]} <= ids
        assert [q["published"] for q in snapshot["queues"] if q["name"] == "remote-json"] == [1]
        status, _, text = site.get("/metrics", token=TOKEN)
        assert status == 200 and 'coremq_queue_messages_published_total{queue="remote-json"} 1.0' in text
        assert 'source="remote"' in text


def test_setting_saved_in_daphne_reaches_the_broker_process(page, separate_site: Site) -> None:
    """A history length saved through daphne's admin re-sizes the queue in the broker's own process."""
    site = separate_site
    with MessageQueue("127.0.0.1", site.broker_port) as client:
        for n in range(5):
            client.publish("remote-hist", {"n": n})
        log_in(page, site, STAFF, next_path="/admin/coremq_broker/queuesetting/add/")
        page.fill("#id_pattern", "remote-h*")
        page.fill("#id_history_length", "2")
        page.click("input[name=_save]")
        expect(page.locator(".messagelist")).to_contain_text("was added successfully")
        page.goto(f"{site.url}/admin/coremq/status/")
        expect(cell(page, "queues", "remote-hist", "history")).to_have_text("2 / 2", timeout=WAIT)
        assert [message["n"] for message in client.get_history("remote-hist")["remote-hist"]] == [3, 4]
