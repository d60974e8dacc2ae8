"""Helpers for integration tests: a cluster file per test and the CLI run as operators run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

import yaml

REPO = Path(__file__).resolve().parents[2]


def write_cluster(tmp_path: Path, mount_prefix: str, control_plane: Iterable[tuple[str, str]],
                  workers: Iterable[tuple[str, str]] = (), **sections) -> Path:
    """A cluster file in tmp_path; mount_prefix keeps tests on the shared OpenBao apart."""
    data = {
        "cluster": {"name": "it", "endpoint": "https://10.0.0.10:6443"},
        "pki": {"key_type": "ec-p256", "leaf_ttl": "24h"},
        "vault": {"mount_prefix": mount_prefix},
        "nodes": {"control_plane": [{"name": n, "ips": [ip]} for n, ip in control_plane],
                  "workers": [{"name": n, "ips": [ip]} for n, ip in workers]},
        **sections,
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(args: list[str], vault_env: Mapping[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """`python -m vaultk8s ...` importing this checkout, with only the given VAULT_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(vault_env, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "vaultk8s", *args], env=env, capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"vaultk8s {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def tree_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root (following pki/ symlinks) with its bytes and mtime: 'nothing written' checks."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            if path.is_file():
                state[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mtime_ns)
            elif path.is_symlink():
                state[str(path.relative_to(root))] = (os.readlink(path).encode(), 0)
    return state
