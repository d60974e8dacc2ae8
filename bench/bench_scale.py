"""Benchmark: peak memory and no-op re-run time of `vaultk8s bootstrap` as the cluster grows.

    python3 bench/bench_scale.py [--nodes 1000 10000] [--pool 8]

For each size: a fresh local OpenBao (raft + TLS), then `python -m vaultk8s bootstrap` run as an
operator runs it (a subprocess), twice: first (everything new) and again (no-op). Reports wall
time and the peak RSS of each bootstrap process (wait4's ru_maxrss) as JSON lines. Results and
targets are in bench/SCALE.md. Heavy: run it alone, not next to the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.ports import find_free_port  # noqa: E402
from tests.helpers.cluster import REPO, cluster_doc, write_cluster  # noqa: E402
from vaultk8s.dev import DevServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--pool", type=int, default=8)
    args = parser.parse_args()
    for nodes in args.nodes:
        with tempfile.TemporaryDirectory() as tmp:
            server = DevServer(Path(tmp) / "bao", port=find_free_port(), start_timeout=60)
            env = server.up()
            try:
                print(json.dumps(measure(env.as_environ(), Path(tmp), nodes, args.pool)), flush=True)
            finally:
                server.down()


def measure(vault_env: dict[str, str], tmp: Path, nodes: int, pool: int) -> dict:
    path = write_cluster(tmp / "cluster.yaml", cluster_doc("scale/", workers=nodes - 1))
    result: dict = {"nodes": nodes, "pool": pool}
    for name in ("first", "noop"):
        seconds, rss_mb, code = run_bootstrap(path, tmp / "out", vault_env, pool)
        result[name] = {"seconds": round(seconds, 1), "peak_rss_mb": round(rss_mb, 1), "exit": code}
    return result


def run_bootstrap(path: Path, out: Path, vault_env: dict[str, str], pool: int) -> tuple[float, float, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(vault_env, PYTHONPATH=str(REPO))
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "vaultk8s", "bootstrap", "-c", str(path), "-o", str(out),
                             "--workers", str(pool), "--output", "json"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr.read().decode()[-2000:])
    return seconds, usage.ru_maxrss / 1024, proc.returncode  # ru_maxrss is in KiB on Linux


if __name__ == "__main__":
    main()
