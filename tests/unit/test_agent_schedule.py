"""The agent's schedule with a fixed clock and seeded randomness."""

import random
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from vaultk8s.plan.schedule import MAX_BACKOFF, MIN_BACKOFF, MIN_SLEEP, backoff, next_wake, renew_at

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


@given(st.integers(min_value=600, max_value=3 * 365 * 86400), st.integers(min_value=0, max_value=2**32))
def test_renewal_is_between_two_thirds_minus_a_twentieth_and_two_thirds(lifetime, seed):
    end = T0 + timedelta(seconds=lifetime)
    when = renew_at(T0, end, random.Random(seed))
    assert T0 + timedelta(seconds=lifetime * (2 / 3 - 1 / 20)) - timedelta(seconds=1) <= when
    assert when <= T0 + timedelta(seconds=lifetime * 2 / 3) + timedelta(seconds=1)


def test_jitter_spreads_a_fleet():
    end = T0 + timedelta(hours=24)
    times = {renew_at(T0, end, random.Random(seed)) for seed in range(100)}
    assert max(times) - min(times) > timedelta(minutes=30)


def test_next_wake_bounds():
    idle = timedelta(hours=1)
    assert next_wake([], T0, idle) == T0 + idle
    assert next_wake([T0 + timedelta(minutes=10)], T0, idle) == T0 + timedelta(minutes=10)
    assert next_wake([T0 - timedelta(hours=5)], T0, idle) == T0 + MIN_SLEEP
    assert next_wake([T0 + timedelta(days=3)], T0, idle) == T0 + idle


@given(st.integers(min_value=1, max_value=100), st.integers(min_value=0, max_value=2**32))
def test_backoff_is_bounded_and_grows(failures, seed):
    delay = backoff(failures, random.Random(seed))
    assert MIN_BACKOFF <= delay <= MAX_BACKOFF
    assert delay <= MIN_BACKOFF * (2 ** min(failures, 16))


def test_backoff_speeds_up_near_expiry():
    rng = random.Random(1)
    assert all(backoff(30, rng, timedelta(minutes=2)) <= timedelta(seconds=12) for _ in range(50))
