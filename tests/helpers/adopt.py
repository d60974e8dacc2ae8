"""Adoption steps as an operator runs them (`vaultk8s adopt`, the in-place bootstrap), for the tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.helpers.cluster import run_cli, write_cluster

CA_KEYS = ("pki/ca.key", "pki/etcd/ca.key", "pki/front-proxy-ca.key")


def derived_cluster(tree: Path, path: Path, prefix: str, workers: list | None = None, **cluster: object) -> Path:
    """`adopt --print-config` of the tree, with only its UNDERIVED fields vault.mount_prefix (and
    nodes.workers) filled in; `cluster` changes the cluster section (a file that disagrees)."""
    printed = run_cli("adopt", "--from", str(tree), "--print-config", check=True).stdout
    assert "UNDERIVED" in printed
    doc = yaml.safe_load(printed)
    doc["vault"]["mount_prefix"] = prefix
    doc["nodes"]["workers"] = workers or []
    doc["cluster"].update(cluster)
    return write_cluster(path, doc)


def adopt(cluster: Path, tree: Path, env: dict[str, str], *extra: str):
    return run_cli("adopt", "--config", str(cluster), "--from", str(tree), *extra, env=env)


def adopt_in_place(plane, cluster: Path, env: dict[str, str]) -> None:
    """adopt, bootstrap over the tree, vaultk8s's RBAC, then the CA keys removed (each checked)."""
    adopt_ok = lambda *extra: assert_ok(adopt(cluster, plane.node_dir, env, *extra))  # noqa: E731
    adopt_ok()
    run_cli("bootstrap", "--config", str(cluster), "--out", str(plane.out), env=env, check=True)
    plane.kubectl("apply", "-f", str(plane.out / "rbac.yaml"), kubeconfig=plane.node_dir / "super-admin.conf")
    adopt_ok("--remove-ca-keys")


def assert_ok(result) -> None:
    assert result.returncode == 0, result.stderr[-2000:]
