"""The agent alone on a fresh control-plane node (as the compose sidecar runs): it fills an empty node
directory from its own credential, and leaves admin.conf, whose certificate is the operator's, alone."""

from __future__ import annotations

import pytest

from tests.helpers.cluster import openssl_verify
from tests.helpers.policy import applied_cluster, cli

pytestmark = pytest.mark.integration


def test_agent_fills_an_empty_control_plane_node_dir(vault_env, tmp_path, mount_prefix):
    path, _, _ = applied_cluster(vault_env, tmp_path, mount_prefix)
    creds = tmp_path / "creds"
    made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", "cp-1", "--out", str(creds))
    assert made.returncode == 0, made.stderr
    node_dir = tmp_path / "fresh" / "kubernetes"
    no_token = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    args = ["agent", "-c", str(path), "--node", "cp-1", "--node-dir", str(node_dir), "--credentials", str(creds),
            "--once"]
    first = cli(no_token, *args)
    assert first.returncode == 0, first.stderr
    pki = node_dir / "pki"
    for name in ("etcd/server", "etcd/peer", "etcd/healthcheck-client", "apiserver"):
        ca = pki / ("etcd/ca.crt" if name.startswith("etcd/") else "ca.crt")
        assert openssl_verify(ca, pki / f"{name}.crt").returncode == 0
    assert (node_dir / "controller-manager.conf").is_file()
    assert not (node_dir / "admin.conf").exists() and not (pki / "admin.key").exists()
    again = cli(no_token, *args)
    assert again.returncode == 0 and "0 renewed" in again.stdout, again.stderr
