"""The schedule spreads a fleet: a first renewal after a start, and retries after an outage (fixed seeds)."""

import random
from datetime import timedelta

from tests.unit.test_agent_schedule import T0
from vaultk8s.plan.schedule import MIN_BACKOFF, backoff, renew_at, retry_delay

DAY = timedelta(hours=24)


def _bucket_counts(times, start, width):
    counts = {}
    for when in times:
        counts[(when - start) // width] = counts.get((when - start) // width, 0) + 1
    return counts


def test_a_fleet_issued_at_its_start_renews_spread_over_the_whole_period():
    times = [renew_at(T0, T0 + DAY, random.Random(seed), started=T0) for seed in range(2000)]
    assert all(T0 <= when <= T0 + DAY * 2 / 3 for when in times)
    # Ten equal slices of [start, 2/3 of life]: none holds more than twice its share.
    counts = _bucket_counts(times, T0, DAY * 2 / 3 / 10)
    assert len(counts) == 10 and max(counts.values()) <= 2 * 2000 / 10


def test_the_first_renewal_spread_is_stable_for_one_certificate():
    assert renew_at(T0, T0 + DAY, random.Random(7), started=T0) == renew_at(T0, T0 + DAY, random.Random(7), started=T0)


def test_old_certificates_and_certificates_issued_after_the_start_keep_the_usual_schedule():
    old = T0 - timedelta(hours=7)  # older than a quarter of its life at the start
    later = T0 + timedelta(minutes=5)  # issued by this agent
    for seed in range(200):
        for issued in (old, later):
            usual = renew_at(issued, issued + DAY, random.Random(seed))
            assert renew_at(issued, issued + DAY, random.Random(seed), started=T0) == usual


def test_a_retry_waits_a_share_of_the_life_left_and_never_past_expiry():
    rng = random.Random(3)
    for left in (timedelta(hours=8), timedelta(hours=1), timedelta(minutes=2), timedelta(seconds=20)):
        for failures in (1, 5, 30):
            delay = retry_delay(failures, rng, left)
            assert max(MIN_BACKOFF, left / 8) <= delay <= max(MIN_BACKOFF * 2, left / 2)
            assert delay < left or delay == MIN_BACKOFF


def test_without_a_certificate_held_a_retry_is_the_plain_backoff():
    assert retry_delay(3, random.Random(5)) == backoff(3, random.Random(5))
