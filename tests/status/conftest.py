"""Fixtures for the status page: a migrated SQLite file with users, real server processes, Chromium."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

from status_site import (
    CHROMIUM_ARGS, PLAIN, STAFF, Server, Site, free_port, manage, port_of, process_env, wait_for_port,
)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file with a staff user and a user who is not staff."""
    path = tmp_path_factory.mktemp("status") / "db.sqlite3"
    manage(path, "migrate", "--noinput")
    manage(path, "createsuperuser", "--noinput", "--username", STAFF[0], "--email", "staff@example.com",
           DJANGO_SUPERUSER_PASSWORD=STAFF[1])
    manage(path, "shell", "-c",
           f"from django.contrib.auth.models import User; User.objects.create_user({PLAIN[0]!r}, password={PLAIN[1]!r})")
    return path


@pytest.fixture(scope="module")
def in_process_site(database: Path) -> Iterator[Site]:
    """``run_coremq --port 0 --web-port 0``: broker and web app on one loop in one process."""
    server = Server([sys.executable, "manage.py", "run_coremq", "--port", "0", "--web-port", "0"],
                    process_env(database))
    try:
        broker_port = port_of(server.wait_for("CoreMQ broker listening on"))
        web_port = port_of(server.wait_for("CoreMQ web app on"))
        yield Site(broker_port, web_port, database)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def separate_site(database: Path) -> Iterator[Site]:
    """``run_coremq --no-web`` in one process, ``daphne coremq_project.asgi:application`` in another."""
    broker = Server([sys.executable, "manage.py", "run_coremq", "--no-web", "--port", "0"], process_env(database))
    web = None
    try:
        broker_port = port_of(broker.wait_for("CoreMQ broker listening on"))
        web_port = free_port()
        web = Server([sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web_port),
                      "coremq_project.asgi:application"],
                     process_env(database, COREMQ_TEST_PORT=str(broker_port)))
        wait_for_port(web_port, web)
        yield Site(broker_port, web_port, database)
    finally:
        if web is not None:
            web.stop()
        broker.stop()


@pytest.fixture
def page(browser):
    """A fresh browser context's page, closed after the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium (the system's), for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


