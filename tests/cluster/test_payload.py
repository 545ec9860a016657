"""The channel payload's parser: the script's format, nothing else (no Redis needed)."""

from __future__ import annotations

import pytest

from coremq_broker.cluster.scripts import PayloadError, parse_payload


def body(n: int) -> bytes:
    return b'{"n":%d}' % n


def test_payload_parser_refuses_what_the_script_did_not_send() -> None:
    """The channel payload parser takes the script's format and refuses anything else."""
    payload = parse_payload(b"17 5 2\n1:q3:a 15:,\"x\":" + b"7:" + body(1) + b"7:" + body(2))
    assert (payload.queue, payload.epoch, payload.first_id, payload.origin) == ("q", 17, 5, b"a 1")
    assert payload.stamps == b',"x":' and payload.bodies == [body(1), body(2)]
    for bad in (b"", b"hello", b"1 2 1\n1:q", b"1 2 1\n1:q0:0:9:x", b"1 2 0\n1:q0:0:x", b"1 x 0\n1:q0:0:"):
        with pytest.raises(PayloadError):
            parse_payload(bad)
