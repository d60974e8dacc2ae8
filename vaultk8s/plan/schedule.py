"""When the agent renews: pure functions of certificate lifetimes, the clock and a random source.

Following smallstep's `step ca renew --daemon`: renew when a third of the lifetime remains, minus a
random jitter of up to a twentieth of the lifetime, so a fleet issued at once does not renew at
once. Failures back off exponentially with jitter, capped, and never past the point of expiry.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

RENEW_FRACTION = 2 / 3
JITTER_FRACTION = 1 / 20
MIN_BACKOFF = timedelta(seconds=5)
MIN_SLEEP = timedelta(seconds=30)  # never a hot loop, even when Vault's clock is behind ours
MAX_BACKOFF = timedelta(minutes=10)


def renew_at(not_before: datetime, not_after: datetime, rng: random.Random) -> datetime:
    lifetime = not_after - not_before
    jitter = lifetime * (JITTER_FRACTION * rng.random())
    return not_before + lifetime * RENEW_FRACTION - jitter


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
