"""A test hook for the crash-consistency tests (tests/integration/test_crash.py).

`VAULTK8S_TEST_CRASH_AT=<point>[#<n>]` makes this process SIGKILL itself the n-th time (default:
the first) it passes `crash_point("<point>")`, a named place between two steps. Unset, as it is
everywhere but in those tests, a call is one environment lookup.

POINTS is the one list of names: docs/ha.md's table and the crash test are checked against it
(tests/unit/test_crashpoint.py), and a name not in it is refused, so a typo in the code or in the
variable fails loudly instead of quietly never crashing.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

ENV = "VAULTK8S_TEST_CRASH_AT"

# In the order a first bootstrap passes them (the payload-* and file-tmp points are store/atomic.py's,
# passed whenever a node's pki/ or a single file is written).
POINTS: dict[str, str] = {
    "checked": "inputs checked and Vault probed; nothing written yet",
    "ca-action": "after each CA mount step (enable, tune, root or HSM intermediate, URLs, auto-tidy)",
    "cas": "all three CA mounts in place",
    "sa-metadata": "the service-account key set's KV metadata written, the key set not yet",
    "sa": "the service-account key set in Vault",
    "roles": "every role and leaf planned; no role written, nothing signed",
    "role-written": "after each PKI role write",
    "leaf-issued": "after each leaf is signed (held in memory)",
    "issued": "every leaf signed; no node file written yet",
    "payload-written": "a new pki/ version directory written in full, `..data` not swapped yet",
    "payload-swapped": "`..data` swapped to the new version, its top-level links not made yet",
    "payload-link": "after each top-level link of a pki/",
    "node-written": "after each node's pki/ update",
    "nodes": "every node's pki/ written",
    "file-tmp": "a single file's temp written, not yet renamed over the file (kubeconfigs, rbac.yaml)",
    "kubeconfigs": "every kubeconfig written; rbac.yaml not yet",
}

_passes: Counter[str] = Counter()
_lock = threading.Lock()


def crash_point(name: str) -> None:
    if name not in POINTS:
        raise ValueError(f"crash_point({name!r}): not in vaultk8s.crashpoint.POINTS")
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("#")
    if point not in POINTS:
        raise ValueError(f"{ENV}={wanted!r} names no crash point; see vaultk8s.crashpoint.POINTS")
    if point != name:
        return
    with _lock:
        _passes[name] += 1
        hit = _passes[name] == int(nth or 1)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
