"""End to end: run_coremq as a real process, headless Chromium on its admin status page.

Waits use Playwright's ``expect`` (it retries until the condition holds, up to
a generous timeout); nothing asserts how fast anything happened.
"""

from __future__ import annotations

import json

from playwright.sync_api import expect

from coremq_client.sync_client import MessageQueue
from screenshots import screenshot_path
from status_site import PLAIN, STAFF, TOKEN, WAIT, Site, cell, log_in

SCREENSHOT = screenshot_path("status.png")  # docs/img/ only under `make screenshots`


def test_staff_sees_clients_and_counts_live(page, in_process_site: Site) -> None:
    """A staff user sees a new client's row and a queue's count rise with no reload, and a screenshot is saved."""
    site = in_process_site
    log_in(page, site, STAFF)
    expect(page).to_have_url(f"{site.url}/admin/coremq/status/")
    expect(page.locator("#cmq-state")).to_have_text("Live", timeout=WAIT)
    expect(page.locator("#cmq-source")).to_have_text("in-process")
    page.evaluate("window.__sameDocument = true")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    with MessageQueue("127.0.0.1", site.broker_port, queues=["e2e-orders"]) as subscriber, \
            MessageQueue("127.0.0.1", site.broker_port) as publisher:
        expect(cell(page, "connections", subscriber.connection_id, "subscriptions")).to_have_text(
            "e2e-orders", timeout=WAIT)
        expect(cell(page, "connections", publisher.connection_id, "transport")).to_have_text("tcp")
        publisher.publish("e2e-orders", {"n": 1})
        expect(cell(page, "queues", "e2e-orders", "published")).to_have_text("1", timeout=WAIT)
        for n in range(2, 6):
            publisher.publish("e2e-orders", {"n": n})
        expect(cell(page, "queues", "e2e-orders", "published")).to_have_text("5", timeout=WAIT)
        expect(cell(page, "queues", "e2e-orders", "subscribers")).to_have_text("1")
        expect(cell(page, "connections", subscriber.connection_id, "messages_out")).to_have_text("5", timeout=WAIT)

        # Traffic on a few queues over a few seconds, so that the screenshot's chart shows something.
        for second in range(6):
            for n in range(6 + 3 * second):
                publisher.publish(("e2e-orders", "news", "metrics.cpu")[n % 3], {"n": n})
            page.wait_for_timeout(1000)  # pacing for the picture, not a timing assertion
        expect(cell(page, "queues", "news", "published")).to_have_text("27", timeout=WAIT)
        expect(page.locator("#cmq-chart")).to_be_visible()
        page.wait_for_function("document.querySelector('#cmq-updated').textContent !== '–'")
        page.screenshot(path=str(SCREENSHOT), full_page=True)

    expect(page.locator(f'#cmq-connections tr[data-id="{subscriber.connection_id}"]')).to_have_count(0, timeout=WAIT)
    assert page.evaluate("window.__sameDocument") is True
    assert navigations == []
    assert SCREENSHOT.stat().st_size > 10_000


def test_tables_sort_and_filter(page, in_process_site: Site) -> None:
    """Clicking a header sorts the queues table both ways; the filter box hides rows that do not match."""
    site = in_process_site
    with MessageQueue("127.0.0.1", site.broker_port) as publisher:
        for name in ("sort-b", "sort-a", "sort-c"):
            publisher.publish(name, {"x": 1})
        publisher.publish("sort-c", {"x": 2})
        log_in(page, site, STAFF)
        page.fill('[data-filter="queues"]', "sort-")
        rows = page.locator("#cmq-queues tbody tr")
        expect(rows).to_have_count(3, timeout=WAIT)
        names = page.locator('#cmq-queues tbody td[data-key="name"]')
        expect(names).to_have_text(["sort-a", "sort-b", "sort-c"])
        page.click('#cmq-queues th[data-key="name"] button')
        expect(names).to_have_text(["sort-c", "sort-b", "sort-a"])
        page.click('#cmq-queues th[data-key="published"] button')
        expect(page.locator('#cmq-queues th[data-key="published"]')).to_have_attribute("aria-sort", "ascending")
        expect(names.first).not_to_have_text("sort-c")
        page.click('#cmq-queues th[data-key="published"] button')
        expect(names.first).to_have_text("sort-c")
        page.fill('[data-filter="queues"]', "sort-b")
        expect(names).to_have_text(["sort-b"])
        expect(page.locator('[data-count="queues"]')).to_contain_text("1 of")


def test_admin_actions_from_the_page(page, in_process_site: Site) -> None:
    """The page's buttons publish a test message, purge a queue and disconnect a client."""
    site = in_process_site
    page.on("dialog", lambda dialog: dialog.accept())
    with MessageQueue("127.0.0.1", site.broker_port, queues=["act-q"], reconnect=False) as subscriber:
        log_in(page, site, STAFF)
        page.fill("#cmq-publish [name=queue]", "act-q")
        page.fill("#cmq-publish [name=message]", json.dumps({"from": "browser"}))
        page.click("#cmq-publish button[type=submit]")
        queue, message = subscriber.get_message(timeout=WAIT / 1000)
        assert queue == "act-q" and message["from"] == "browser"
        expect(page.locator("#cmq-toast")).to_contain_text("Published message 1 to act-q")
        expect(cell(page, "queues", "act-q", "history")).to_have_text("1 / 10", timeout=WAIT)

        page.locator('#cmq-queues tr[data-id="act-q"] button[data-action="purge"]').click()
        expect(cell(page, "queues", "act-q", "history")).to_have_text("0 / 10", timeout=WAIT)
        assert subscriber.get_history("act-q") == {"act-q": []}

        page.locator(f'#cmq-connections tr[data-id="{subscriber.connection_id}"] button[data-action="disconnect"]').click()
        expect(page.locator(f'#cmq-connections tr[data-id="{subscriber.connection_id}"]')).to_have_count(0, timeout=WAIT)
        expect(page.locator("#cmq-toast")).to_contain_text("Disconnected")


def test_anonymous_and_non_staff_go_to_login(page, in_process_site: Site) -> None:
    """Anyone but staff lands on the admin login page, and a non-staff login does not get past it."""
    site = in_process_site
    page.goto(f"{site.url}/admin/coremq/status/")
    expect(page).to_have_url(f"{site.url}/admin/login/?next=/admin/coremq/status/")
    log_in(page, site, PLAIN)
    expect(page.locator(".errornote")).to_contain_text("staff account")
    expect(page).to_have_url(f"{site.url}/admin/login/?next=/admin/coremq/status/")
    assert page.locator("#coremq-status").count() == 0


def test_admin_index_links_to_the_page(page, in_process_site: Site) -> None:
    """The admin index has a link to the live status page."""
    log_in(page, in_process_site, STAFF, next_path="/admin/")
    page.click("#coremq-status-link a >> nth=0")
    expect(page).to_have_url(f"{in_process_site.url}/admin/coremq/status/")


def test_json_and_metrics_over_http(in_process_site: Site) -> None:
    """status.json and /metrics answer the token, with the live broker's data; without it, 401."""
    site = in_process_site
    with MessageQueue("127.0.0.1", site.broker_port) as publisher:
        publisher.publish("http-q", {"x": 1})
        snapshot = site.status()
        assert snapshot["source"] == "local"
        assert snapshot["broker"]["address"] == f"127.0.0.1:{site.broker_port}"
        assert publisher.connection_id in {c["id"] for c in snapshot["connections"]}
        assert [q["published"] for q in snapshot["queues"] if q["name"] == "http-q"] == [1]
        status, content_type, text = site.get("/metrics", token=TOKEN)
        assert status == 200 and content_type.startswith("text/plain")
        assert 'coremq_queue_messages_published_total{queue="http-q"} 1.0' in text
        assert "coremq_up 1.0" in text
    assert site.get("/coremq/status.json")[0] == 401
    assert site.get("/metrics")[0] == 401


def test_saved_queue_setting_changes_running_history(page, in_process_site: Site) -> None:
    """A history length saved in the admin re-sizes a running broker's queue, with no restart."""
    site = in_process_site
    with MessageQueue("127.0.0.1", site.broker_port) as client:
        for n in range(6):
            client.publish("e2e-hist", {"n": n})
        assert len(client.get_history("e2e-hist")["e2e-hist"]) == 6

        log_in(page, site, STAFF, next_path="/admin/coremq_broker/queuesetting/add/")
        page.fill("#id_pattern", "e2e-hist")
        page.fill("#id_history_length", "3")
        page.click("input[name=_save]")
        expect(page.locator(".messagelist")).to_contain_text("was added successfully")

        page.goto(f"{site.url}/admin/coremq/status/")
        expect(cell(page, "queues", "e2e-hist", "history")).to_have_text("3 / 3", timeout=WAIT)
        assert [message["n"] for message in client.get_history("e2e-hist")["e2e-hist"]] == [3, 4, 5]
        client.publish("e2e-hist", {"n": 6})
        assert [message["n"] for message in client.get_history("e2e-hist")["e2e-hist"]] == [4, 5, 6]
