"""The security tests' world: users, a group, API tokens and permission rules; a broker and servers over them.

The same rules are checked over TCP and over the WebSocket (``CASES``), with
``COREMQ['DEFAULT_POLICY'] = "deny"`` so that only the rules open anything:

- ``lobby``: everything, for anyone (anonymous included);
- ``news.*``: subscribe and history for any logged-in user; publish for bob;
- ``secret``: everything for the group ``readers`` (alice);
- ``locked``: a rule that grants nothing, so nobody, staff included, may use it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest_asyncio
from asgiref.sync import sync_to_async

from django.contrib.auth.models import Group, Permission, User
from django.db.backends.signals import connection_created
from django.utils import timezone

from coremq_broker.auth.authenticator import authenticate
from coremq_broker.auth.policy import access_watcher
from coremq_broker.core.broker import Broker
from coremq_broker.core.config import BrokerConfig
from coremq_broker.models import ApiToken, PermissionRule
from coremq_broker.transports.tcp import TcpConnection
from coremq_client import AsyncMessageQueue

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# One certificate maker (tests/client) and one server runner (tests/status) for the whole suite.
sys.path.extend([str(ROOT / "tests"), str(ROOT / "tests" / "client"), str(ROOT / "tests" / "status")])
from selfsigned import tls_contexts  # noqa: E402
from status_site import Server  # noqa: E402

__all__ = ["World", "make_world", "CASES", "PASSWORDS", "FAST_HASHERS", "tls_contexts", "Server",
           "Secured", "secured", "until", "migrated_world", "run_coremq"]


def _read_uncommitted(sender: object, connection: object, **kwargs: object) -> None:
    """Readers of the in-memory test database take no table locks.

    The test database is SQLite in memory with a shared cache, where a reader
    in another thread (the policy watcher, the authenticator) makes a writer
    fail at once with "database table is locked" instead of waiting, as it
    would on a file or on PostgreSQL. Reading uncommitted data here is harmless.
    """
    if connection.vendor == "sqlite" and connection.is_in_memory_db():  # type: ignore[attr-defined]
        connection.cursor().execute("PRAGMA read_uncommitted = true")  # type: ignore[attr-defined]


connection_created.connect(_read_uncommitted, dispatch_uid="coremq-security-read-uncommitted")

PASSWORDS = {"alice": "alice-pw-1", "bob": "bob-pw-1", "root": "root-pw-1", "relay": "relay-pw-1"}
#: Django's real hasher takes half a second on purpose; the tests log in many times.
FAST_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

#: (who, action, queue, allowed): who is "anonymous" or a username of PASSWORDS.
CASES = [
    ("anonymous", "subscribe", "lobby", True),
    ("anonymous", "publish", "lobby", True),
    ("anonymous", "history", "lobby", True),
    ("anonymous", "subscribe", "news.eu", False),
    ("anonymous", "history", "news.eu", False),
    ("alice", "subscribe", "news.eu", True),
    ("alice", "history", "news.eu", True),
    ("alice", "publish", "news.eu", False),
    ("bob", "publish", "news.eu", True),
    ("alice", "subscribe", "secret", True),
    ("alice", "publish", "secret", True),
    ("alice", "history", "secret", True),
    ("bob", "subscribe", "secret", False),
    ("bob", "publish", "secret", False),
    ("bob", "history", "secret", False),
    ("alice", "publish", "unruled", False),
    ("root", "subscribe", "unruled", False),
    ("root", "publish", "locked", False),
]


@dataclass
class World:
    """The tokens made for the tests (the secrets, which the database does not keep)."""

    alice_token: str
    expired_token: str
    revoked_token: str
    relay_token: str
    alice_token_id: int


def make_world() -> World:
    """Create the users, group, tokens and rules (call with FAST_HASHERS set). Blocking."""
    readers = Group.objects.create(name="readers")
    alice = User.objects.create_user("alice", password=PASSWORDS["alice"])
    alice.groups.add(readers)
    bob = User.objects.create_user("bob", password=PASSWORDS["bob"])
    User.objects.create_user("root", password=PASSWORDS["root"], is_staff=True)
    relay = User.objects.create_user("relay", password=PASSWORDS["relay"], is_staff=True)
    relay.user_permissions.add(Permission.objects.get(codename="relay", content_type__app_label="coremq_broker"))

    rule = PermissionRule.objects.create
    rule(pattern="lobby", publish=True, subscribe=True, history=True, anonymous=True)
    rule(pattern="news.*", subscribe=True, history=True, authenticated=True)
    rule(pattern="news.*", publish=True).users.add(bob)
    rule(pattern="secret", publish=True, subscribe=True, history=True).groups.add(readers)
    rule(pattern="locked", note="closed to all")

    token, alice_token = ApiToken.objects.issue(alice, "alice's script")
    _, expired = ApiToken.objects.issue(alice, "old", expires=timezone.now() - datetime.timedelta(minutes=1))
    revoked_row, revoked = ApiToken.objects.issue(alice, "leaked")
    revoked_row.revoked = timezone.now()
    revoked_row.save()
    _, relay_token = ApiToken.objects.issue(relay, "web process")
    return World(alice_token, expired, revoked, relay_token, token.pk)


# -- a broker as run_coremq builds it, on the test's loop ------------------------------------

@dataclass
class Secured:
    """A running broker over the world, and ``connect(who, **options)`` for its clients."""

    broker: Broker
    world: World
    connect: Callable[..., Awaitable[AsyncMessageQueue]]

    def connection_of(self, client: AsyncMessageQueue) -> Any:
        return self.broker.registry.connections.get(client.connection_id)


@pytest_asyncio.fixture
async def secured(settings) -> AsyncIterator[Secured]:
    """A broker as run_coremq builds it, over the rules of security_world, with the default policy "deny".

    The Django authenticator and the policy watcher work in threads of their
    own: the tests that use it need ``django_db(transaction=True)``.
    """
    settings.PASSWORD_HASHERS = FAST_HASHERS
    settings.COREMQ = {**settings.COREMQ, "DEFAULT_POLICY": "deny"}
    world = await sync_to_async(make_world)()
    watcher = await sync_to_async(access_watcher)()
    broker = Broker(BrokerConfig(host="127.0.0.1", port=0, shutdown_timeout=1.0),
                    access=watcher.snapshot, authenticator=authenticate, transport=TcpConnection)
    await broker.start()
    stop = watcher.attach(broker)
    clients: list[AsyncMessageQueue] = []

    async def connect(who: str = "anonymous", **options: Any) -> AsyncMessageQueue:
        """A client of the broker, logged in with ``who``'s password unless other credentials are given."""
        if who != "anonymous" and "token" not in options:
            options.update(username=who, password=PASSWORDS[who])
        client = AsyncMessageQueue(broker.host, broker.port, reconnect=False, resume=False, **options)
        clients.append(client)
        await client.connect()
        return client

    try:
        yield Secured(broker, world, connect)
    finally:
        for client in clients:
            await client.close()
        await asyncio.to_thread(stop)
        await broker.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``condition()`` holds (polled on the loop); fail after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- run_coremq as a real process ---------------------------------------------------------

def _env(database: Path, coremq: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "security_settings", "COREMQ_DATABASE": str(database),
            "COREMQ_TEST_SETTINGS": json.dumps(coremq), "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")])}


def migrated_world(database: Path) -> World:
    """Migrate a SQLite file and make the world in it, in a process of its own; return its tokens."""
    for command in (["migrate", "--noinput", "-v", "0"],
                    ["shell", "-c", "import dataclasses, json, security_world as w; "
                                    "print(json.dumps(dataclasses.asdict(w.make_world())))"]):
        done = subprocess.run([sys.executable, "manage.py", *command], cwd=ROOT, env=_env(database, {}),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    return World(**json.loads(done.stdout.strip().splitlines()[-1]))


def run_coremq(database: Path, *args: str, coremq: dict[str, Any] | None = None) -> tuple[Server, int]:
    """``manage.py run_coremq --no-web --port 0 *args`` with these COREMQ keys; return it and its port."""
    server = Server([sys.executable, "manage.py", "run_coremq", "--no-web", "--port", "0", *args],
                    _env(database, coremq or {}))
    line = server.wait_for("CoreMQ broker listening on")
    return server, int(line.split()[-2].rsplit(":", 1)[1])
