"""Three ``run_coremq --redis URL --node-name N`` processes on one real redis-server: one broker, as clients see it.

Each node is a real subprocess (``--no-web --no-memcached``, port 0); the
clients are the project's Python client and the 2015 client of
``tests/broker/test_compat_2015.py``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from coremq_client.sync_client import MessageQueue
from redis_servers import RedisServer
from servers import ROOT, ServerProcess

pytestmark = pytest.mark.timeout(180)
HERE = Path(__file__).resolve().parent


class NodeProcess(ServerProcess):
    """``manage.py run_coremq`` as one node of the cluster on ``redis_url``; :attr:`port` once it listens."""

    def __init__(self, redis_url: str, name: str, database: Path, *, by_settings: bool = False) -> None:
        """``by_settings``: ``COREMQ['ENGINE'] = "redis"``, ``REDIS_URL``, ``NODE_NAME`` instead of the flags."""
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cluster_settings", "COREMQ_DATABASE": str(database),
               "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        flags = ["--redis", redis_url, "--node-name", name]
        if by_settings:
            env.update(COREMQ_TEST_REDIS_URL=redis_url, COREMQ_TEST_NODE_NAME=name)
            flags = []
        super().__init__([sys.executable, "manage.py", "run_coremq", "--no-web", "--no-memcached", "--host",
                          "127.0.0.1", "--port", "0", *flags], env)
        self.name = name
        self.wait_for(f"CoreMQ node {name} in the cluster on Redis at {redis_url}")
        line = self.wait_for("CoreMQ broker listening on")
        self.port = int(re.search(r":(\d+) \(TCP\)", line).group(1))  # type: ignore[union-attr]

    def kill(self) -> None:
        """``kill -9``: no BYE, no goodbye to the cluster (its heartbeat expires)."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="module")
def redis_for_nodes() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def cluster(redis_for_nodes: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    """Nodes a, b and c, started one after the other on one Redis (c configured by its settings)."""
    database = tmp_path_factory.mktemp("nodes") / "db.sqlite3"
    nodes: dict[str, NodeProcess] = {}
    try:
        for name in ("a", "b", "c"):
            nodes[name] = NodeProcess(redis_for_nodes.url, name, database, by_settings=name == "c")
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def client(node: NodeProcess, *queues: str, **options: object) -> MessageQueue:
    mq = MessageQueue("127.0.0.1", node.port, queues=list(queues), timeout=10, **options)
    mq.connect()
    return mq


def received(subscriber: MessageQueue, count: int, queue: str) -> list[tuple[int, int]]:
    """``(id, n)`` of the next ``count`` messages of ``queue``."""
    got = []
    while len(got) < count:
        delivery = subscriber.receive(timeout=15)
        assert delivery is not None, got
        if delivery.queue == queue:
            got.append((delivery.id, delivery.message["n"]))
    return got


def test_publishes_on_every_node_reach_every_node_once_in_id_order(cluster: dict[str, NodeProcess]) -> None:
    subscribers = [client(node, "fan") for node in cluster.values()]
    publishers = [client(node) for node in cluster.values()]
    try:
        ids = [publishers[n % 3].publish("fan", {"n": n})["id"] for n in range(90)]  # type: ignore[index]
        assert ids == list(range(1, 91))  # one numbering whichever node took the publish
        for subscriber in subscribers:
            assert received(subscriber, 90, "fan") == [(n + 1, n) for n in range(90)]
            assert subscriber.receive(timeout=0.3) is None  # nothing twice
    finally:
        for mq in subscribers + publishers:
            mq.close()


def test_a_node_listens_to_a_queue_only_while_it_has_local_subscribers(
        cluster: dict[str, NodeProcess], redis_for_nodes: RedisServer) -> None:
    """The first local subscriber makes the node subscribe to the queue's channel; the last one leaving ends it."""
    from coremq_broker.cluster.keys import Keys

    redis = redis_for_nodes.client()
    channel = Keys("coremq:").queue_channel("watched")

    def listeners() -> int:
        return dict(redis.pubsub_numsub(channel))[channel]

    def settles_at(count: int) -> None:
        deadline = time.monotonic() + 10
        while listeners() != count:
            assert time.monotonic() < deadline, listeners()
            time.sleep(0.05)

    first, second, other = client(cluster["b"], "watched"), client(cluster["b"], "watched"), client(cluster["c"])
    try:
        assert listeners() == 1  # subscribed: answered once node b listens (one channel for two subscribers)
        other.subscribe("watched")
        assert listeners() == 2
        first.unsubscribe("watched")
        first.publish("watched", {"n": 0})  # b still delivers to its other subscriber
        assert [(d.queue, d.message["n"]) for d in (second.receive(timeout=10), other.receive(timeout=10))] == \
            [("watched", 0), ("watched", 0)]
        assert listeners() == 2
        second.close()  # the last local subscriber of b leaves by closing
        settles_at(1)
        other.unsubscribe("watched")
        settles_at(0)
    finally:
        for mq in (first, second, other):
            mq.close()


def test_history_and_since_on_another_node(cluster: dict[str, NodeProcess]) -> None:
    """Published on a with no subscriber anywhere; c answers history, since and paging from Redis."""
    publisher, reader = client(cluster["a"]), client(cluster["c"])
    try:
        for n in range(20):
            publisher.publish("log", {"n": n})
        assert [m["n"] for m in reader.get_history("log")["log"]] == list(range(20))
        page = reader.history("log", since=5, limit=4)
        assert [m["coremq_id"] for m in page["history"]["log"]] == [6, 7, 8, 9]
        assert page["more"] == {"log": True}
        assert page["sequence"]["log"]["first"] == 1 and page["sequence"]["log"]["last"] == 20
        assert [m["n"] for m in reader.get_history("log", since=15)["log"]] == [15, 16, 17, 18, 19]
        publisher.publish("log", {"n": 20})  # and the next one read there too
        assert [m["n"] for m in reader.get_history("log", since=20)["log"]] == [20]
    finally:
        publisher.close()
        reader.close()


def test_status_names_the_node_that_answered_and_the_others(cluster: dict[str, NodeProcess]) -> None:
    mq = client(cluster["b"])
    try:
        addresses = {"a": f"127.0.0.1:{cluster['a'].port}", "c": f"127.0.0.1:{cluster['c'].port}"}
        deadline = time.monotonic() + 20
        while True:  # the list is as fresh as the heartbeats (every 2 s)
            cluster_state = mq.status()["durable"]
            if {node["name"]: node["address"] for node in cluster_state["others"]} == addresses:
                break
            assert time.monotonic() < deadline, cluster_state
            time.sleep(0.2)
        assert cluster_state["engine"] == "redis" and cluster_state["node"] == "b"
        assert cluster_state["state"] == "ok"
        assert all(node["uptime"] > 0 and node["connections"] >= 0 for node in cluster_state["others"])
        status = mq.status()
        assert status["node"] == "b" and {node["name"] for node in status["other_nodes"]} == {"a", "c"}
    finally:
        mq.close()


def test_the_2015_client_against_every_node(cluster: dict[str, NodeProcess]) -> None:
    spec = importlib.util.spec_from_file_location("compat_2015", ROOT / "tests" / "broker" / "test_compat_2015.py")
    compat = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(compat)  # type: ignore[union-attr]
    clients = {name: compat.Client2015("127.0.0.1", node.port) for name, node in cluster.items()}
    try:
        for c2015 in clients.values():
            c2015.connect()
            assert c2015.welcome_message == "OK: Welcome from CoreMQ!"
        assert clients["b"].subscribe("old")["response"] == "OK: Subscribe successful"
        assert clients["c"].subscribe("old")["response"] == "OK: Subscribe successful"
        assert clients["a"].send_message("old", {"a": 1})["response"] == "OK: Message sent"
        for name in ("b", "c"):
            queue, message = clients[name].get_message(timeout=10)
            assert queue == "old" and message["a"] == 1 and message["coremq_sender"] == clients["a"].connection_id
        assert [h["a"] for h in clients["c"].get_history("old")["history"]["old"]] == [1]
        assert [h["a"] for h in clients["a"].get_history("old")["history"]["old"]] == [1]
    finally:
        for c2015 in clients.values():
            c2015.close()


def test_node_killed_its_client_resumes_on_another_node(redis_for_nodes: RedisServer, tmp_path: Path) -> None:
    """kill -9 of the subscriber's node; the client, sent to another node, gets every message once, in order."""
    nodes = {name: NodeProcess(redis_for_nodes.url, name, tmp_path / "db.sqlite3") for name in ("k1", "k2")}
    subscriber = client(nodes["k1"], "stream")
    publisher = client(nodes["k2"])
    watcher = client(nodes["k2"])
    try:
        for n in range(50):
            publisher.publish("stream", {"n": n})
        assert received(subscriber, 20, "stream") == [(n + 1, n) for n in range(20)]
        nodes["k1"].kill()
        subscriber.port = nodes["k2"].port  # where a load balancer would send it
        for n in range(50, 100):
            publisher.publish("stream", {"n": n})
        assert received(subscriber, 80, "stream") == [(n + 1, n) for n in range(20, 100)]
        assert subscriber.receive(timeout=0.3) is None
        assert not subscriber.gaps
        # The killed node's heartbeat expires: it leaves the node list.
        deadline = time.monotonic() + 30
        while "k1" in {node["name"] for node in watcher.status()["durable"]["others"]}:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        for mq in (subscriber, publisher, watcher):
            mq.close()
        for node in nodes.values():
            node.stop()


def test_unreachable_redis_at_start_exits_non_zero(tmp_path: Path) -> None:
    from redis_servers import free_port

    node = ServerProcess([sys.executable, "manage.py", "run_coremq", "--no-web", "--no-memcached", "--port", "0",
                          "--redis", f"redis://127.0.0.1:{free_port()}/0"],
                         {**os.environ, "DJANGO_SETTINGS_MODULE": "coremq_project.settings",
                          "COREMQ_DATABASE": str(tmp_path / "db.sqlite3")})
    assert node.process.wait(timeout=60) == 1
    node.wait_for("cannot serve: cluster unavailable: Redis at redis://127.0.0.1:")


def test_point_to_point_to_a_connection_on_another_node(cluster: dict[str, NodeProcess]) -> None:
    """A message to a connection id reaches it on any node; one to an id no node holds is refused, as on one node."""
    sender, receiver = client(cluster["a"]), client(cluster["c"])
    try:
        reply = sender.publish(receiver.connection_id, {"n": 1})
        assert reply["response"] == "OK: Message sent"  # type: ignore[index]
        delivery = receiver.receive(timeout=10)
        assert delivery is not None and delivery.queue == receiver.connection_id and delivery.message["n"] == 1
        assert delivery.message["coremq_sender"] == sender.connection_id
        assert sender.publish(f"{receiver.connection_id}/7", {"n": 2})["response"] == "OK: Message sent"  # type: ignore[index]
        delivery = receiver.receive(timeout=10)
        assert delivery is not None and delivery.queue == f"{receiver.connection_id}/7" and delivery.message["n"] == 2
        gone = "00000000-0000-4000-8000-000000000000"
        with pytest.raises(Exception, match="no such connection"):
            sender.publish(gone, {"n": 3})
        # Another node's connection id is no queue of this node: not listed, not subscribable.
        status = sender.status(queues=True)
        assert receiver.connection_id not in {queue["name"] for queue in status["queue_list"]}
        with pytest.raises(Exception, match="permission denied"):
            sender.subscribe(receiver.connection_id)
    finally:
        sender.close()
        receiver.close()


def test_redis_restarted_under_two_nodes(tmp_path: Path) -> None:
    """While Redis is down a publish is answered ERROR; once it is back the nodes go on by themselves.

    Redis runs without persistence here, so its restart loses the queue: the numbering starts again
    at 1 (a new epoch), as after a restart of a single broker, and the node cuts the queue's
    subscribers so that they resume in the new numbering.
    """
    from coremq_client.errors import ServerError

    redis = RedisServer()
    nodes = {name: NodeProcess(redis.url, name, tmp_path / "db.sqlite3") for name in ("r1", "r2")}
    subscriber = client(nodes["r2"], "weather", resume=False)
    resuming = client(nodes["r2"], "weather")  # resume=True: ids it holds are of the old numbering
    publisher = client(nodes["r1"])
    try:
        assert [publisher.publish("weather", {"n": n})["id"] for n in range(3)] == [1, 2, 3]  # type: ignore[index]
        assert received(subscriber, 3, "weather") == [(1, 0), (2, 1), (3, 2)]
        assert received(resuming, 3, "weather") == [(1, 0), (2, 1), (3, 2)]
        redis.kill()
        with pytest.raises(ServerError, match="cluster unavailable"):
            publisher.publish("weather", {"n": -1})
        redis.start()
        deadline = time.monotonic() + 30
        while True:  # the node's pool reconnects at once; its pub/sub connection with a backoff (at most 2 s)
            try:
                reply = publisher.publish("weather", {"n": 3})
            except ServerError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
                continue
            if dict(redis.client().pubsub_numsub(b"coremq:q:weather"))[b"coremq:q:weather"] == 1:
                break  # r2 listens again: what follows reaches it
            assert time.monotonic() < deadline
            time.sleep(0.2)
        first = reply["id"]  # type: ignore[index]
        for n in range(4, 10):
            publisher.publish("weather", {"n": n})
        # Both subscribers were cut at the reset (r2 counted it), as by a broker restart; the resuming
        # one reconnected and resumed in the new numbering: every message from n=4 on, in order, once.
        # (The one without resume gets what is published once it is back, as in 2015.)
        got = []
        while not got or got[-1][1] != 9:
            delivery = resuming.receive(timeout=15)
            assert delivery is not None, got
            got.append((delivery.id, delivery.message["n"]))
        assert [(message_id, n) for message_id, n in got if n >= 4] == [(first + k, 3 + k) for k in range(1, 7)]
        assert resuming.status()["durable"]["resets"] == 1
    finally:
        resuming.close()
        subscriber.close()
        publisher.close()
        for node in nodes.values():
            node.stop()
        redis.close()


def test_rolling_restart_while_10000_messages_flow(tmp_path: Path) -> None:
    """Each of three nodes is stopped and started again in turn while 10,000 messages are published.

    Before a node stops, its clients are given another node's port (what a load balancer does);
    they reconnect there and resume. Every subscriber gets one contiguous run of ids, in order,
    holding every acknowledged message: nothing lost, nothing twice.
    """
    import threading

    from coremq_client.errors import CoreMQError

    redis = RedisServer()
    database = tmp_path / "db.sqlite3"
    nodes = {name: NodeProcess(redis.url, name, database) for name in ("x", "y", "z")}
    subscribers = {"x": client(nodes["x"], "rolling"), "y": client(nodes["y"], "rolling")}
    publisher = client(nodes["z"])
    placed = {"x": [subscribers["x"]], "y": [subscribers["y"]], "z": [publisher]}
    total, acknowledged, restarted = 10_000, set(), threading.Semaphore(0)
    failures: list[BaseException] = []

    def publish_all() -> None:
        try:
            for n in range(total):
                if n in (2000, 5000, 8000):
                    restarted.acquire()  # the next restart happens while the stream flows
                while True:
                    try:
                        publisher.publish("rolling", {"n": n})
                        acknowledged.add(n)
                        break
                    except CoreMQError:  # its node stopped: sent again once it reconnected elsewhere
                        time.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failures.append(exc)

    flow = threading.Thread(target=publish_all)
    flow.start()
    try:
        names = ["x", "y", "z"]
        for index, name in enumerate(names):
            restarted.release()
            time.sleep(0.3)
            elsewhere = names[(index + 1) % 3]
            for mq in placed[name]:
                mq.port = nodes[elsewhere].port
            placed[elsewhere] += placed[name]
            placed[name] = []
            nodes[name].stop()
            nodes[name] = NodeProcess(redis.url, name, database)
        flow.join(timeout=150)
        assert not flow.is_alive() and not failures, failures
        assert acknowledged == set(range(total))
        for subscriber in subscribers.values():
            got: list[tuple[int, int]] = []
            while not got or got[-1][1] != total - 1:
                delivery = subscriber.receive(timeout=20)
                assert delivery is not None, got[-5:]
                got.append((delivery.id, delivery.message["n"]))
            ids = [message_id for message_id, _ in got]
            assert ids == list(range(1, len(ids) + 1))  # one run of ids, in order, once each
            assert {n for _, n in got} == set(range(total))  # every acknowledged message
            assert not subscriber.gaps
    finally:
        flow.join(timeout=5)
        for mq in [*subscribers.values(), publisher]:
            mq.close()
        for node in nodes.values():
            node.stop()
        redis.close()


def test_a_queue_setting_saved_once_reaches_every_node(tmp_path: Path) -> None:
    """Two nodes on one database: a history length saved there applies on both, and in Redis."""
    import subprocess

    database = tmp_path / "db.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cluster_settings", "COREMQ_DATABASE": str(database),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}

    def manage(*args: str) -> None:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr

    manage("migrate", "--noinput")
    redis = RedisServer()
    nodes = {name: NodeProcess(redis.url, name, database) for name in ("s1", "s2")}
    one, two = client(nodes["s1"], "tuned-1"), client(nodes["s2"], "tuned-1")
    try:
        manage("shell", "-c", "from coremq_broker.models import QueueSetting; "
                              "QueueSetting.objects.create(pattern='tuned-*', history_length=3)")

        def capacity(mq: MessageQueue) -> int | None:
            queues = {queue["name"]: queue for queue in mq.status(queues=True)["queue_list"]}
            return queues["tuned-1"]["history_capacity"] if "tuned-1" in queues else None

        deadline = time.monotonic() + 15
        while capacity(one) != 3 or capacity(two) != 3:  # each node follows the database
            assert time.monotonic() < deadline, (capacity(one), capacity(two))
            time.sleep(0.2)
        for n in range(6):
            one.publish("tuned-1", {"n": n})
        assert [m["n"] for m in two.get_history("tuned-1")["tuned-1"]] == [3, 4, 5]  # Redis keeps 3
        assert redis.client().xlen(b"coremq:q:tuned-1:h") == 3
    finally:
        one.close()
        two.close()
        for node in nodes.values():
            node.stop()
        redis.close()


def test_a_token_revoked_once_closes_its_connections_on_every_node(tmp_path: Path) -> None:
    """Two nodes on one database: revoking an API token there closes its connections on both."""
    import subprocess

    database = tmp_path / "db.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "cluster_settings", "COREMQ_DATABASE": str(database),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}

    def manage(*args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "--noinput")
    token = manage("shell", "-c", "from django.contrib.auth.models import User; "
                                  "from coremq_broker.models import ApiToken; "
                                  "user = User.objects.create_user('robot', password='x-robot-password-1'); "
                                  "print(ApiToken.objects.issue(user, 'robot')[1])").strip().splitlines()[-1]
    redis = RedisServer()
    nodes = {name: NodeProcess(redis.url, name, database) for name in ("t1", "t2")}
    errors: dict[str, list] = {"t1": [], "t2": []}
    clients = {name: MessageQueue("127.0.0.1", node.port, token=token, timeout=10, backoff=0.05, max_backoff=0.5,
                                  on_error=errors[name].append) for name, node in nodes.items()}
    try:
        for mq in clients.values():
            mq.connect()
            assert mq.user == "robot"
        manage("shell", "-c", "from django.utils import timezone; from coremq_broker.models import ApiToken; "
                              "ApiToken.objects.update(revoked=timezone.now())")
        deadline = time.monotonic() + 15
        while not all(any("credentials revoked" in str(error) for error in errors[name]) for name in errors):
            assert time.monotonic() < deadline, errors
            time.sleep(0.1)
    finally:
        for mq in clients.values():
            mq.close()
        for node in nodes.values():
            node.stop()
        redis.close()
