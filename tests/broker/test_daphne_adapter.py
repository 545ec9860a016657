"""The daphne fast path's adapter (transports/websocket/daphne.py) against the installed daphne, autobahn and Twisted."""

from __future__ import annotations

import logging

from coremq_broker.transports.websocket import daphne as adapter


def test_the_installed_versions_and_internals_are_the_ones_the_fast_path_was_written_for():
    """Fails when daphne, autobahn or Twisted change version or move what DirectWriter reads: re-check it, then
    update WRITTEN_FOR."""
    assert adapter.fast_path_refusal() is None


def test_other_versions_turn_the_fast_path_off_with_a_reason():
    """Another release of any of the three is refused, named with its version (the bridge then uses ASGI send)."""
    installed = {name: release + ".0" for name, release in adapter.WRITTEN_FOR.items()}
    assert adapter.fast_path_refusal(installed) is None
    for name in adapter.WRITTEN_FOR:
        reason = adapter.fast_path_refusal({**installed, name: "99.0"})
        assert reason is not None and name in reason and "99.0" in reason
    assert "not installed" in (adapter.fast_path_refusal({**installed, "twisted": None}) or "")


def test_a_refusal_is_logged_once_and_daphnes_send_gets_no_writer(monkeypatch, caplog):
    """With the check failing, direct_writer gives None (ASGI send) for daphne's own send, and says why once."""
    import functools

    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    adapter._refused.cache_clear()
    monkeypatch.setattr(adapter, "fast_path_refusal", lambda versions=None: "autobahn 0.1 is not 26.11")
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    send = functools.partial(Server.handle_reply, protocol)
    try:
        with caplog.at_level(logging.WARNING, logger="coremq.websocket"):
            assert adapter.direct_writer(send, 1 << 20) is None
            assert adapter.direct_writer(send, 1 << 20) is None
        assert [r.getMessage() for r in caplog.records].count(
            "WebSocket fast path off, browsers are written to through ASGI send: autobahn 0.1 is not 26.11") == 1
    finally:
        adapter._refused.cache_clear()


def test_a_transport_the_writers_do_not_know_gets_asgi_send_and_one_log_line(caplog):
    """A daphne connection on another kind of Twisted transport: no writer (ASGI send, no bound), said once per kind.

    Attributes are not enough to pick a writer: Twisted's TLS layer passes every attribute it lacks on to the
    TCP connection beneath, so a TLS connection looks like a TCP one to ``hasattr`` (writing to that socket
    sent cleartext into the TLS stream). The writers are chosen by type; the TLS one is tested through a real
    daphne in tests/websocket/test_tls.py.
    """
    import functools

    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol
    from twisted.internet.testing import StringTransport

    adapter._refused.cache_clear()
    adapter._unknown_transport.cache_clear()
    protocol = WebSocketProtocol.__new__(WebSocketProtocol)
    protocol.transport = StringTransport()
    send = functools.partial(Server.handle_reply, protocol)
    try:
        with caplog.at_level(logging.WARNING, logger="coremq.websocket"):
            assert adapter.direct_writer(send, 1 << 20) is None
            assert adapter.direct_writer(send, 1 << 20) is None
        lines = [r.getMessage() for r in caplog.records if "StringTransport" in r.getMessage()]
        assert lines == ["WebSocket fast path off for twisted.internet.testing.StringTransport connections: browsers "
                         "on them are written to through ASGI send, without the slow-consumer bound"]
        assert not adapter.is_tls(send)
    finally:
        adapter._refused.cache_clear()
        adapter._unknown_transport.cache_clear()
