"""End to end: drops of the layer inside run_coremq on its status page (Chromium), status.json and /metrics.

run_coremq serves the project with ``CHANNEL_LAYERS`` on the CoreMQ layer
without ``hosts``, and the chat room's consumer: a chat client makes the
process receive on its layer. A layer in the test process sends to a channel of
that process that nobody reads, past its capacity of 3.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest
import websockets
from playwright.sync_api import expect, sync_playwright

from coremq_broker.layers import CoreMQChannelLayer
from coremq_client.sync_client import MessageQueue
from servers import ROOT, ServerProcess

HERE = Path(__file__).resolve().parent
STAFF = ("layer-staff", "layer-staff-password-1")
TOKEN = "layer-status-token"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _env(database: Path) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "layer_status_settings", "COREMQ_DATABASE": str(database),
            "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),
            "DJANGO_SUPERUSER_PASSWORD": STAFF[1]}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """``run_coremq --port 0 --web-port 0`` with the layer settings: (broker port, web port)."""
    database = tmp_path_factory.mktemp("layer-status") / "db.sqlite3"
    for command in (["migrate", "--noinput", "-v", "0"],
                    ["createsuperuser", "--noinput", "--username", STAFF[0], "--email", "s@example.com"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=_env(database), check=True)
    server = ServerProcess([sys.executable, "manage.py", "run_coremq", "--port", "0", "--web-port", "0",
                            "--no-memcached"], _env(database))
    try:
        broker = int(re.search(r":(\d+) \(TCP\)", server.wait_for("CoreMQ broker listening on")).group(1))
        web = int(re.search(r":(\d+)", server.wait_for("CoreMQ web app on").split(" on ", 1)[1]).group(1))
        yield broker, web
    finally:
        server.stop()


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


async def _overfill(broker_port: int, web_port: int) -> str:
    """Join the chat (the process now receives on its layer), send 5 to a channel of it nobody reads."""
    async with websockets.connect(f"ws://127.0.0.1:{web_port}/ws/chat/lobby/"):
        with MessageQueue("127.0.0.1", broker_port) as mq:
            for _ in range(200):
                names = [q["name"] for q in mq.status(queues=True)["queue_list"]]
                local = [n for n in names if re.fullmatch(r"asgi\.channel\.specific\.[0-9a-f]{32}!", n)]
                if local:
                    break
                await asyncio.sleep(0.05)
        assert local, names
        channel = local[0][len("asgi.channel."):] + "nobody"
        sender = CoreMQChannelLayer(hosts=[f"127.0.0.1:{broker_port}"])
        for n in range(5):
            await sender.send(channel, {"type": "never.read", "n": n})
        await sender.close()
        for _ in range(200):  # until the process dropped the two that did not fit
            if json.loads(_get(f"http://127.0.0.1:{web_port}/coremq/status.json"))["channel_layer"]["total"] >= 2:
                break
            await asyncio.sleep(0.05)
    return channel


def test_drops_inside_run_coremq_show_on_its_status_page(site) -> None:
    """A channel of run_coremq's layer over capacity: 2 drops in status.json, /metrics and the page's card."""
    broker_port, web_port = site
    channel = asyncio.run(_overfill(broker_port, web_port))
    status = json.loads(_get(f"http://127.0.0.1:{web_port}/coremq/status.json"))
    assert status["channel_layer"]["channels"] == {channel: 2} and status["channel_layer"]["total"] == 2
    metrics = _get(f"http://127.0.0.1:{web_port}/metrics").decode()
    assert f'coremq_layer_dropped_total{{channel="{channel}"}} 2.0' in metrics
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.goto(f"http://127.0.0.1:{web_port}/admin/login/?next=/admin/coremq/status/")
            page.fill("#id_username", STAFF[0])
            page.fill("#id_password", STAFF[1])
            page.click("input[type=submit]")
            expect(page.locator('[data-field="layer_dropped"]')).to_have_text("2", timeout=15_000)
            expect(page.locator('[data-field="layer_detail"]')).to_contain_text(f"{channel} 2")
        finally:
            browser.close()
