"""The soak benchmark end to end for a few seconds (no timing asserted): its load really runs."""

from __future__ import annotations

import pytest

from bench.soak import main


@pytest.mark.timeout(60)
def test_a_short_soak_churns_publishes_and_cuts_slow_readers(capsys) -> None:
    """`python -m bench.soak` for 9 s: connections churned, messages published, slow readers cut, a verdict."""
    rc = main(["--minutes", "0.15", "--interval", "1", "--slow", "10"])
    out = capsys.readouterr().out
    assert "load generator failed" not in out and "no verdict" not in out, out
    samples = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    assert samples, out
    churned, published, slow, errors = (int(value) for value in samples[-1][3:7])
    assert churned > 0 and published > 0 and slow > 0, out
    assert errors == 0, out
    assert rc == 0 and "flat" in out.splitlines()[-1], out
