"""A test hook for the crash-consistency tests (tests/integration/test_crash.py).

`VAULTK8S_TEST_CRASH_AT=<point>[#<n>]` makes this process SIGKILL itself the n-th time (default:
the first) it passes `crash_point("<point>")`, a named place between two steps. Unset, as it is
everywhere but in those tests, a call is one environment lookup. Points: docs/ha.md.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "VAULTK8S_TEST_CRASH_AT"
_passes: Counter[str] = Counter()
_lock = threading.Lock()


def crash_point(name: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("#")
    if point != name:
        return
    with _lock:
        _passes[name] += 1
        hit = _passes[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
