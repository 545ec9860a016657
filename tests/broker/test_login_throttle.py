"""The login throttle (access.FailureTracker) as a value: counted before checked, per address and per username."""

from __future__ import annotations

import time

from coremq_broker.core.access import FailureTracker, peer_address


def test_parallel_attempts_count_before_they_are_settled() -> None:
    """However many attempts are under way, at most ``limit`` begin; the others are refused and counted."""
    tracker = FailureTracker(limit=3)
    begun = [tracker.begin("10.0.0.1", "alice") for _ in range(25)]
    assert sum(attempt is not None for attempt in begun) == 3
    assert tracker.describe()["auth_refused"] == 22


def test_a_success_takes_back_its_own_attempt_only() -> None:
    """bob's success from the guessing address leaves the address's failures for alice counted."""
    tracker = FailureTracker(limit=3)
    for _ in range(2):
        tracker.settle(tracker.begin("10.0.0.1", "alice"), False)  # type: ignore[arg-type]
    own = tracker.begin("10.0.0.1", "bob")
    assert own is not None
    tracker.settle(own, True)
    tracker.settle(tracker.begin("10.0.0.1", "alice"), False)  # type: ignore[arg-type]
    assert tracker.blocked("10.0.0.1") and tracker.begin("10.0.0.1", "bob") is None


def test_a_username_over_the_limit_is_refused_from_any_address() -> None:
    """Guesses spread over addresses stop at the username's limit; tokens (no username) are not held by it."""
    tracker = FailureTracker(limit=2)
    for address in ("10.0.0.1", "10.0.0.2"):
        tracker.settle(tracker.begin(address, "alice"), False)  # type: ignore[arg-type]
    assert tracker.begin("10.0.0.3", "alice") is None
    assert tracker.begin("10.0.0.3") is not None and tracker.begin("10.0.0.3", "bob") is not None


def test_failures_expire_with_the_window() -> None:
    """A failure older than ``window`` seconds no longer counts."""
    tracker = FailureTracker(limit=1, window=0.2)
    tracker.settle(tracker.begin("10.0.0.1"), False)  # type: ignore[arg-type]
    assert tracker.blocked("10.0.0.1")
    time.sleep(0.25)
    assert not tracker.blocked("10.0.0.1") and tracker.describe()["auth_blocked"] == 0


def test_memory_is_bounded_by_max_keys() -> None:
    """Past ``max_keys`` addresses and usernames, the oldest are forgotten."""
    tracker = FailureTracker(limit=1, max_keys=2)
    tracker.begin("10.0.0.1")
    assert tracker.blocked("10.0.0.1")
    tracker.begin("10.0.0.2")
    tracker.begin("10.0.0.3")
    assert not tracker.blocked("10.0.0.1") and tracker.blocked("10.0.0.3")


def test_ipv6_addresses_count_per_64_network() -> None:
    """One client holding a /64 cannot walk through it; IPv4 counts per address, mapped IPv4 as IPv4."""
    assert peer_address("2001:db8:1:2::5") == peer_address("[2001:db8:1:2:ffff::9]") == "2001:db8:1:2::/64"
    assert peer_address("2001:db8:1:3::5") != peer_address("2001:db8:1:2::5")
    assert peer_address("::ffff:192.0.2.7") == "192.0.2.7" and peer_address("192.0.2.8") == "192.0.2.8"
    assert peer_address("a-unix-socket") == "a-unix-socket"


def test_a_users_success_does_not_reopen_the_username() -> None:
    """Guesses for alice from elsewhere stay counted when alice herself logs in meanwhile."""
    tracker = FailureTracker(limit=3)
    guesses = [tracker.begin(f"10.0.1.{n}", "alice") for n in range(2)]
    alice = tracker.begin("10.0.0.1", "alice")
    assert alice is not None and tracker.begin("10.0.1.9", "alice") is None
    tracker.settle(alice, True)
    for guess in guesses:
        tracker.settle(guess, False)  # type: ignore[arg-type]
    assert tracker.begin("10.0.1.9", "alice") is not None and tracker.begin("10.0.1.10", "alice") is None
