"""Benchmark: bootstrap a cluster with many workers against a real local OpenBao.

    python3 bench/bench_bootstrap.py [--workers 1000] [--key-type ec-p256] [--pool 8]

Prints one JSON line: first run (everything new), second run (no-op), and counts. Baselines are in
bench/BASELINE.md; targets belong here, not in timed unit tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.ports import find_free_port  # noqa: E402
from tests.helpers.cluster import cluster_doc  # noqa: E402
from vaultk8s.config import parse_config  # noqa: E402
from vaultk8s.dev import DevServer  # noqa: E402
from vaultk8s.ops.bootstrap import bootstrap  # noqa: E402
from vaultk8s.vault.gateway import VaultGateway  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--key-type", default="ec-p256")
    parser.add_argument("--pool", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(Path(tmp) / "bao", port=find_free_port())
        env = server.up()
        try:
            print(json.dumps(run(env, Path(tmp) / "out", args)))
        finally:
            server.down()


def run(env, out: Path, args) -> dict:
    config = parse_config(cluster_doc("bench/", workers=args.workers, key_type=args.key_type))
    gateway = VaultGateway.from_env(env.as_environ(), pool_size=args.pool + 2)
    timings = {}
    for name in ("first", "second"):
        started = time.monotonic()
        report = bootstrap(config, out, gateway, now=datetime.now(timezone.utc), workers=args.pool)
        timings[name] = {"seconds": round(time.monotonic() - started, 2), "actions": len(report.actions),
                         "kept": report.kept}
    return {"workers": args.workers, "key_type": args.key_type, "pool": args.pool, **timings}


if __name__ == "__main__":
    main()
