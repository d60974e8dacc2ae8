"""Helpers for the SA/kubeconfig/etcd tests: cluster files with explicit nodes, "nothing written" checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable, Mapping

import yaml

from tests.helpers import cluster


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
    """helpers.cluster.run_cli with a list of arguments, checking the exit code by default."""
    return cluster.run_cli(*args, env=dict(vault_env), check=check, timeout=120)


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
