"""status.json, /metrics, the page and its actions, through Django's test client against a real broker."""

from __future__ import annotations

import socket

import pytest
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from coremq_broker.core.access import AccessPolicy
from coremq_broker.core.broker import Broker
from coremq_broker.status import source as source_module
from wire import RawClient

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("boss", password="x", is_staff=True)


@pytest.fixture
def staff_client(client: Client, staff) -> Client:
    client.force_login(staff)
    return client


@pytest.fixture
def token_settings(settings):
    settings.COREMQ = {**settings.COREMQ, "STATUS_TOKEN": TOKEN}


def metrics_of(text: str) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_anonymous_is_refused_everywhere(client: Client, broker) -> None:
    """Without a session or token: the page redirects to the admin login; JSON and metrics answer 401."""
    page = client.get("/admin/coremq/status/")
    assert page.status_code == 302 and page["Location"].startswith("/admin/login/?next=/admin/coremq/status/")
    for path in ("/coremq/status.json", "/metrics"):
        response = client.get(path)
        assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Bearer")
    assert client.post("/admin/coremq/status/purge/", {"queue": "q"}).status_code == 403


def test_non_staff_user_is_sent_to_login(client: Client, django_user_model, broker) -> None:
    """A logged-in user who is not staff goes to the login page, and gets 403 from the JSON and actions."""
    client.force_login(django_user_model.objects.create_user("plain", password="x"))
    page = client.get("/admin/coremq/status/")
    assert page.status_code == 302 and page["Location"].startswith("/admin/login/")
    assert client.get("/coremq/status.json").status_code == 403
    assert client.get("/metrics").status_code == 403
    assert client.post("/admin/coremq/status/purge/", {"queue": "q"}).status_code == 403


def test_token_opens_json_and_metrics(client: Client, broker, token_settings) -> None:
    """The bearer token from COREMQ['STATUS_TOKEN'] opens status.json and /metrics; a wrong one does not."""
    assert client.get("/coremq/status.json", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/coremq/status.json", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    assert client.get("/coremq/status.json", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401


def test_no_token_configured_means_sessions_only(client: Client, broker) -> None:
    """With no STATUS_TOKEN set, no bearer token is accepted (not even an empty one)."""
    assert client.get("/coremq/status.json", headers={"Authorization": "Bearer "}).status_code == 401


def test_staff_page_renders_the_shell(staff_client: Client, broker) -> None:
    """The page is the admin-styled shell that status.js fills, with the JSON URL and a CSRF token."""
    page = staff_client.get("/admin/coremq/status/")
    body = page.content.decode()
    assert page.status_code == 200
    assert 'data-status-url="/coremq/status.json"' in body and "coremq/status.js" in body
    assert "csrfmiddlewaretoken" in body
    index = staff_client.get("/admin/").content.decode()
    assert 'href="/admin/coremq/status/"' in index


def test_status_json_reads_the_live_registry(staff_client: Client, broker) -> None:
    """status.json shows the broker, each connection with its counters, and each public queue, live."""
    subscriber = RawClient(broker.host, broker.port)
    subscriber.control({"coremq_subscribe": ["orders"]})
    publisher = RawClient(broker.host, broker.port)
    for n in range(3):
        publisher.send("orders", {"n": n})
        publisher.read()
    subscriber.read()  # the first delivery: all three are handled once the last reply came

    snapshot = staff_client.get("/coremq/status.json").json()
    assert snapshot["source"] == "local"
    assert snapshot["broker"]["server"] == "CoreMQ" and snapshot["broker"]["connections"] == 2
    assert len(snapshot["broker"]["rate_in_series"]) == 59 and sum(snapshot["broker"]["rate_in_series"]) <= 3
    connections = {c["id"]: c for c in snapshot["connections"]}
    assert connections[publisher.id]["messages_in"] == 3 and connections[publisher.id]["transport"] == "tcp"
    assert connections[subscriber.id]["subscriptions"] == sorted([subscriber.id, "orders"])
    assert connections[subscriber.id]["messages_out"] >= 1
    (orders,) = [q for q in snapshot["queues"] if q["name"] == "orders"]
    assert orders["published"] == 3 and orders["subscribers"] == 1
    assert orders["history"] == 3 and orders["history_capacity"] == 10
    assert all(q["name"] not in (publisher.id, subscriber.id) for q in snapshot["queues"])  # private queues

    publisher.send("orders", {"n": 3})
    publisher.read()
    again = staff_client.get("/coremq/status.json").json()
    assert [q["published"] for q in again["queues"] if q["name"] == "orders"] == [4]


def test_metrics_follow_prometheus_conventions(staff_client: Client, broker) -> None:
    """/metrics has coremq_-prefixed names, _total counters, base units, and per-queue and per-transport series."""
    publisher = RawClient(broker.host, broker.port)
    for _ in range(2):
        publisher.send("jobs", {"x": 1})
        publisher.read()
    response = staff_client.get("/metrics")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    samples = metrics_of(text)
    assert samples[("coremq_up", ())] == 1
    assert samples[("coremq_connections", (("transport", "tcp"),))] == 1
    assert samples[("coremq_connections", (("transport", "websocket"),))] == 0
    assert samples[("coremq_queue_messages_published_total", (("queue", "jobs"),))] == 2
    assert samples[("coremq_queue_history_messages", (("queue", "jobs"),))] == 2
    assert samples[("coremq_queue_history_capacity_messages", (("queue", "jobs"),))] == 10
    assert samples[("coremq_messages_received_total", ())] == 2
    assert samples[("coremq_resident_memory_bytes", ())] > 0
    assert samples[("coremq_start_time_seconds", ())] > 1.7e9
    info = [labels for name, labels in samples if name == "coremq_broker_info"]
    assert dict(info[0])["server"] == "CoreMQ" and dict(info[0])["source"] == "local"
    assert all(name.startswith("coremq_") for name, _ in samples)
    assert "# TYPE coremq_messages_received_total counter" in text
    assert not any(label == "connection" for _, labels in samples for label, _ in labels)  # no id labels


def test_actions_publish_purge_disconnect(staff_client: Client, broker) -> None:
    """The page's actions publish a test message, purge a queue's history and disconnect a connection."""
    subscriber = RawClient(broker.host, broker.port)
    subscriber.control({"coremq_subscribe": ["news"]})

    reply = staff_client.post("/admin/coremq/status/publish/", {"queue": "news", "message": '{"hello": 1}'}).json()
    assert reply["ok"] and reply["reply"] == {"response": "OK: Message sent", "id": 1}
    queue, message = subscriber.read()
    assert queue == "news" and message["hello"] == 1  # sent over the protocol, by a connection of its own

    reply = staff_client.post("/admin/coremq/status/purge/", {"queue": "news"}).json()
    assert reply == {"ok": True, "message": "Purged 1 message(s) from news.",
                     "reply": {"response": "OK: Purged", "purged": 1}}
    assert subscriber.control({"coremq_gethistory": ["news"]})["history"] == {"news": []}

    reply = staff_client.post("/admin/coremq/status/disconnect/", {"connection": subscriber.id}).json()
    assert reply["ok"]
    assert subscriber.read_until_closed() == [(subscriber.id, {"response": "ERROR: disconnected by an administrator", "code": "disconnected"})]


def test_actions_report_failures(staff_client: Client, broker) -> None:
    """A bad message, an unknown connection or an unknown action is answered with the reason."""
    bad = staff_client.post("/admin/coremq/status/publish/", {"queue": "news", "message": "{nope"})
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    bad = staff_client.post("/admin/coremq/status/publish/", {"queue": "has space", "message": "{}"})
    assert bad.status_code == 400 and "whitespace" in bad.json()["error"]
    gone = staff_client.post("/admin/coremq/status/disconnect/", {"connection": "nobody"})
    assert gone.status_code == 400 and gone.json()["error"] == "no connection 'nobody'"
    assert staff_client.post("/admin/coremq/status/explode/").status_code == 404
    assert staff_client.get("/admin/coremq/status/purge/").status_code == 405


def test_actions_need_the_csrf_token(staff, broker) -> None:
    """A POST without the CSRF token is refused, so another site cannot make a staff browser act."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff)
    assert client.post("/admin/coremq/status/purge/", {"queue": "q"}).status_code == 403


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_broker(staff_client: Client, settings) -> None:
    """With no broker in-process and none listening, status.json is 503 and /metrics says coremq_up 0."""
    assert Broker.running() is None
    settings.COREMQ = {**settings.COREMQ, "PORT": _closed_port()}
    response = staff_client.get("/coremq/status.json")
    assert response.status_code == 503 and "cannot connect" in response.json()["error"]
    assert metrics_of(staff_client.get("/metrics").content.decode()) == {("coremq_up", ()): 0}


class StaffOnlyControl(AccessPolicy):
    """Refuses status and admin requests to connections that are not staff (all of them, before issue 5)."""

    def allows(self, connection, action, queue):  # type: ignore[no-untyped-def]
        return action not in ("status", "admin") or connection.principal.is_staff


@pytest.fixture
def remote_broker(settings, monkeypatch, broker):
    """The ``broker`` fixture, but hidden from Broker.running(): the web code must reach it over TCP."""
    monkeypatch.setattr(Broker, "_running", None)
    settings.COREMQ = {**settings.COREMQ, "HOST": broker.host, "PORT": broker.port}
    return broker


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_remote_status_over_the_protocol(remote_broker, django_user_model) -> None:
    """From a web process without the broker, status.json and the actions go through a status request."""
    from asgiref.sync import sync_to_async

    staff = await sync_to_async(django_user_model.objects.create_user)("boss", password="x", is_staff=True)
    client = AsyncClient()
    await client.aforce_login(staff)
    other = RawClient(remote_broker.host, remote_broker.port)
    other.send("remote-q", {"x": 1})
    other.read()
    try:
        snapshot = (await client.get("/coremq/status.json")).json()
        assert snapshot["source"] == "remote"
        ids = {c["id"] for c in snapshot["connections"]}
        assert other.id in ids and snapshot["observer"] in ids  # the status client is a connection too
        assert [q["published"] for q in snapshot["queues"] if q["name"] == "remote-q"] == [1]
        reply = (await client.post("/admin/coremq/status/purge/", {"queue": "remote-q"})).json()
        assert reply["ok"] and reply["reply"]["purged"] == 1
        reply = (await client.post("/admin/coremq/status/publish/", {"queue": "remote-q", "message": '"hi"'})).json()
        assert reply["ok"] and reply["reply"]["id"] == 2
        text = (await client.get("/metrics")).content.decode()
        assert metrics_of(text)[("coremq_broker_info", (("address", f"127.0.0.1:{remote_broker.port}"),
                                                         ("role", "master"), ("server", "CoreMQ"),
                                                         ("source", "remote"),
                                                         ("version", snapshot["broker"]["version"])))] == 1
    finally:
        await source_module.close_client()


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_remote_status_can_be_refused_by_the_policy(remote_broker, django_user_model) -> None:
    """A broker whose policy refuses status and admin to non-staff connections refuses the anonymous web client."""
    from asgiref.sync import sync_to_async

    remote_broker.call(lambda: remote_broker.broker.set_access(StaffOnlyControl()))
    staff = await sync_to_async(django_user_model.objects.create_user)("boss", password="x", is_staff=True)
    client = AsyncClient()
    await client.aforce_login(staff)
    try:
        response = await client.get("/coremq/status.json")
        assert response.status_code == 503 and "permission denied: status" in response.json()["error"]
        refused = await client.post("/admin/coremq/status/purge/", {"queue": "q"})
        assert refused.status_code == 400 and "permission denied: admin" in refused.json()["error"]
        assert remote_broker.call(lambda: remote_broker.broker.registry.denials) == 2
    finally:
        await source_module.close_client()


def test_status_token_setting_is_checked(settings) -> None:
    """A STATUS_TOKEN that is not a string, or is empty, is a system check error with an id."""
    from coremq_broker import conf

    settings.COREMQ = {"STATUS_TOKEN": 12345}
    assert [error.id for error in conf.setting_errors()] == ["coremq.E003"]
    settings.COREMQ = {"STATUS_TOKEN": " "}
    assert [error.id for error in conf.setting_errors()] == ["coremq.E004"]
    settings.COREMQ = {"STATUS_TOKEN": "fine"}
    assert conf.setting_errors() == [] and conf.get_status_token() == "fine"
