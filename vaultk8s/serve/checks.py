"""A health check: None when healthy, otherwise why not, in one line."""

from __future__ import annotations

from typing import Callable

Check = Callable[[], "str | None"]


def run_check(check: Check) -> str | None:
    """A check that raises is an unhealthy process, not a dead listener or a stopped watchdog."""
    try:
        return check()
    except Exception as err:
        return f"check failed: {type(err).__name__}"
