"""Two checkouts' bootstraps, paired on one OpenBao: the comparison compare.py's rows cannot make
when each run's own floor moves more than the change (bench/README.md, eighth pass).

    python3 bench/bootstrap_ab.py --before ../wt-old --after . [--rounds 4] [--workers 1000] [--work-dir DIR]

One local OpenBao (vaultk8s.dev.DevServer) under the work directory. Each round runs
`python -m vaultk8s bootstrap` from each checkout (PYTHONPATH), in alternating order, each with its
own mount prefix and `--out`, and prints its wall time and its roles+signs phase (wall and CPU,
from the report). Use a tmpfs work directory (/dev/shm) to leave the disk out.
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

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.ports import find_free_port  # noqa: E402
from tests.helpers.cluster import cluster_doc  # noqa: E402
from vaultk8s.dev import DevServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout of the code before")
    parser.add_argument("--after", type=Path, required=True, help="checkout of the code after")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--work-dir", type=Path, help="a new directory (default: a temp directory, removed)")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    with tempfile.TemporaryDirectory(prefix="vaultk8s-ab-", dir=args.work_dir) as tmp_name:
        tmp = Path(tmp_name)
        server = DevServer(tmp / "bao", port=find_free_port())
        env = server.up()
        try:
            for r in range(args.rounds):
                for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    print(json.dumps({"round": r, "code": name, **_bootstrap(env, trees[name], tmp, f"r{r}{name}",
                                                                             args.workers)}), flush=True)
        finally:
            server.down()


def _bootstrap(env, tree: Path, tmp: Path, tag: str, workers: int) -> dict:
    cluster_file = tmp / f"{tag}.yaml"
    cluster_file.write_text(yaml.safe_dump(cluster_doc(f"{tag}/", workers=workers, control_planes=3,
                                                       key_type="ec-p256"), sort_keys=False))
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    environ.update(env.as_environ(), PYTHONPATH=str(tree))
    started, load = time.monotonic(), os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-m", "vaultk8s", "bootstrap", "--config", str(cluster_file),
                           "--out", str(tmp / f"out-{tag}"), "--output", "json"],
                          env=environ, cwd=tree, capture_output=True, text=True)  # -m puts the cwd first
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"bootstrap from {tree} exited {done.returncode}: {done.stderr[-2000:]}")
    report = json.loads(done.stdout[done.stdout.index("{"):])
    return {"seconds": round(seconds, 2), "load_before": round(load, 2),
            "roles_signs_s": report["phase_seconds"]["roles+signs"],
            "roles_signs_cpu_s": report["phase_cpu_seconds"]["roles+signs"]}


if __name__ == "__main__":
    main()
