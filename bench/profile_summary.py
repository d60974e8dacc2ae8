"""Where a bootstrap's time goes, from a py-spy raw profile (`bench/compare.py --profile FILE`).

    python3 bench/profile_summary.py FILE

Each sample (a non-idle thread's stack) is put in the first bucket whose frame it contains, so a
sign call's TLS and JSON time counts as "sign requests", not as "requests/ssl".
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

BUCKETS: tuple[tuple[str | None, str], ...] = (  # (label, a frame's "function (file" prefix), most specific first
    ("sign requests (/sign)", "sign (vaultk8s/vault/gateway.py"),
    ("role writes", "write_role (vaultk8s/vault/gateway.py"),
    ("role reads", "read_role (vaultk8s/vault/gateway.py"),
    ("key generation", "generate_key (vaultk8s/crypto.py"),
    ("CSR building", "build_csr (vaultk8s/crypto.py"),
    ("chain self-signed checks", "is_self_signed (vaultk8s/crypto.py"),
    ("planning leaves (read + verify files)", "_plan_leaves (vaultk8s/ops/bootstrap.py"),
    ("writing node pki/ dirs", "_write_nodes (vaultk8s/ops/bootstrap.py"),
    ("kubeconfigs", "ensure_kubeconfigs (vaultk8s/ops/kubeconfigs.py"),
    ("waiting for workers", "wait (concurrent/futures/_base.py"),
    (None, "_worker (concurrent/futures/thread.py:81)"),  # an idle pool thread: py-spy misses this wait
    ("imports and start-up", "<module>"),
)


def summarize(path: Path) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        label = next((label for label, frame in BUCKETS if frame in stack), "other")
        if label:
            counts[label] += int(n)
    total = sum(counts.values()) or 1
    return [(label, round(100 * n / total, 1)) for label, n in counts.most_common()]


if __name__ == "__main__":
    for label, share in summarize(Path(sys.argv[1])):
        print(f"{share:5.1f}%  {label}")
