"""``python -m bench.inproc``: the broker's own cost per publish, in-process (no timing asserted)."""

from __future__ import annotations

import pytest

from bench import inproc
from coremq_broker.core import wire


@pytest.mark.parametrize("batch", [1, 100])
def test_counted_reads_deliver_and_answer_every_publish(batch: int) -> None:
    """A fixed number of reads (the callgrind mode) passes the harness's own checks."""
    result = inproc.measure(subscribers=3, batch=batch, reads=5)
    assert result["published"] == 5 * batch


def test_timed_mode_reports_a_cost() -> None:
    result = inproc.measure(subscribers=2, batch=10, seconds=0.05)
    assert result["published"] > 0 and 0 < result["best_us"] <= result["us_per_publish"]


def test_a_wrong_reply_frame_fails_the_measurement(monkeypatch) -> None:
    """The harness parses the last read's frames: frames whose header is one byte off break it."""
    original = wire._power_of_ten_above
    # The runs' sizes start one digit too long: every frame of a run claims one byte more.
    monkeypatch.setattr(wire, "_power_of_ten_above", lambda number: original(number) * 10)
    with pytest.raises(AssertionError):
        inproc.measure(subscribers=1, batch=20, reads=1)
