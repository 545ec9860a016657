"""End to end: failed logins on the status page's "Failed logins" card (run_coremq and headless Chromium)."""

from __future__ import annotations

from playwright.sync_api import expect

from status_site import STAFF, WAIT, Site, log_in
from wire import RawClient


def test_failed_logins_show_on_the_status_page(page, in_process_site: Site) -> None:
    """A wrong password over TCP raises the Failed logins card; the refused and blocked counts are beside it."""
    site = in_process_site
    log_in(page, site, STAFF)
    expect(page.locator("#cmq-state")).to_have_text("Live", timeout=WAIT)
    expect(page.locator('[data-field="auth_failures"]')).to_have_text("0", timeout=WAIT)
    client = RawClient("127.0.0.1", site.broker_port)
    reply = client.control({"coremq_auth": {"username": "nobody", "password": "wrong"}})
    assert reply["response"] == "ERROR: authentication failed"
    expect(page.locator('[data-field="auth_failures"]')).to_have_text("1", timeout=WAIT)
    expect(page.locator('[data-field="auth_detail"]')).to_have_text("0 refused unchecked, 0 blocked")
    client.close()
