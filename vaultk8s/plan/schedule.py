"""When the agent renews: pure functions of certificate lifetimes, the clock and a random source.

Following smallstep's `step ca renew --daemon`: renew when a third of the lifetime remains, minus a
random jitter of up to a twentieth of the lifetime, so a fleet issued at once does not renew at
once. A certificate that was young when the agent started (a fleet bootstrapped at once) has its
first renewal spread uniformly between the start and that time instead, so the fleet's renewals
are spread over a whole renewal period from the first round on, not bunched into the jitter.
Failures back off exponentially with jitter, capped, and never past the point of expiry; while
much life is left a retry waits a random eighth to a half of it, so the backlog of an outage
comes back spread over hours, not all within the first minutes of recovery.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from vaultk8s.catalog import RENEW_FRACTION

JITTER_FRACTION = 1 / 20
MIN_BACKOFF = timedelta(seconds=5)
MIN_SLEEP = timedelta(seconds=30)  # never a hot loop, even when Vault's clock is behind ours
MAX_BACKOFF = timedelta(minutes=10)
YOUNG_FRACTION = 1 / 4  # "young at start": issued less than a quarter of its life before the agent started
PATIENCE = (1 / 8, 1 / 2)  # a retry waits this share of the life left, drawn uniformly


def renew_at(not_before: datetime, not_after: datetime, rng: random.Random,
             started: datetime | None = None) -> datetime:
    """When to renew; `started` is when the agent started (None: no first-renewal spread).

    Stable for one certificate and agent: `rng` is seeded per certificate by the caller.
    """
    lifetime = not_after - not_before
    jitter = lifetime * (JITTER_FRACTION * rng.random())
    when = not_before + lifetime * RENEW_FRACTION - jitter
    # Found on disk at start (or issued in the first round: Vault backdates not_before 30 s).
    if started is not None and started - lifetime * YOUNG_FRACTION <= not_before <= started < when:
        return started + (when - started) * rng.random()
    return when


def next_wake(renewal_times: list[datetime], now: datetime, idle: timedelta) -> datetime:
    """The earliest renewal, or now + idle when nothing is held (re-check the files then)."""
    soonest = min(renewal_times, default=now + idle)
    return max(now + MIN_SLEEP, min(soonest, now + idle))


def backoff(failures: int, rng: random.Random, until_expiry: timedelta | None = None) -> timedelta:
    """Full-jitter exponential backoff; retries speed up again as expiry comes close."""
    ceiling = min(MAX_BACKOFF, MIN_BACKOFF * (2 ** min(failures, 16)))
    if until_expiry is not None and until_expiry > timedelta(0):
        ceiling = min(ceiling, max(MIN_BACKOFF, until_expiry / 10))
    return MIN_BACKOFF + (ceiling - MIN_BACKOFF) * rng.random()


def retry_delay(failures: int, rng: random.Random, until_expiry: timedelta | None = None) -> timedelta:
    """After a failed round: `backoff`, but never less than a random share (PATIENCE) of the life
    left. Each retry still comes sooner as expiry nears and never sleeps past it."""
    delay = backoff(failures, rng, until_expiry)
    if until_expiry is None or until_expiry <= timedelta(0):
        return delay
    low, high = PATIENCE
    return max(delay, until_expiry * (low + (high - low) * rng.random()))
