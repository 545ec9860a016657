"""The store's listener: bounded output for a flood of gets, the connection limit, bad bytes never kill it."""

from __future__ import annotations

import socket
import time

from coremq_broker.store import Store
from coremq_broker.transports.memcached import MemcachedSession

from memcached_peers import StoreServerThread, exchange


def test_one_read_answers_a_bounded_amount_and_the_rest_follows():
    """A read asking for GBs of values is answered max_output at a time; receive(b"") carries on, in order."""
    store = Store()
    store.store("set", b"big", b"x" * 500_000)
    session = MemcachedSession(store, max_output=1_000_000)
    answer = session.receive(b"get big\r\n" * 10 + b"mn\r\n")
    assert answer.count(b"VALUE big") == 2 and session.waiting
    while session.waiting:
        answer += session.receive(b"")
    assert answer.count(b"VALUE big") == 10 and answer.endswith(b"END\r\nMN\r\n")


def test_client_that_does_not_read_holds_no_unbounded_output():
    """A client sending 2,000 gets of a 500 kB value without reading: the server's buffered output stays bounded."""
    server = StoreServerThread()
    try:
        server.call(lambda: server.store.store("set", b"big", b"x" * 500_000))
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"get big\r\n" * 2000)
            time.sleep(1.0)
            buffered = server.call(lambda: max(c.transport.get_write_buffer_size()
                                               for c in server.server.connections))
            assert buffered < 16 * 2**20
        assert exchange(server.port, [b"get nothing\r\n"]) == b"END\r\nMN\r\n"
    finally:
        server.stop()


def test_connection_limit():
    """Past max_connections a new connection is closed at once; the others are served."""
    server = StoreServerThread(max_connections=2)
    try:
        first = socket.create_connection(("127.0.0.1", server.port))
        second = socket.create_connection(("127.0.0.1", server.port))
        third = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert third.recv(10) == b""
        first.sendall(b"mn\r\n")
        assert first.recv(10) == b"MN\r\n"
        for sock in (first, second, third):
            sock.close()
    finally:
        server.stop()


def test_garbage_never_kills_the_server():
    """Random bytes get memcached's errors or a close; the server answers the next client."""
    import random

    server = StoreServerThread()
    try:
        rng = random.Random(7)
        for _ in range(30):
            junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 3000)))
            exchange(server.port, [junk], end=b"", timeout=0.3)
        assert exchange(server.port, [b"set a 0 0 1\r\nx\r\nget a\r\n"]) == b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\nMN\r\n"
    finally:
        server.stop()
