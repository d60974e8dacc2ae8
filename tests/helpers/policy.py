"""Shared steps for the policy integration tests: a cluster file, the CLI, raw requests with a given token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from vaultk8s.config import load_config

CLUSTER = {
    "cluster": {"name": "pol", "endpoint": "https://10.0.0.10:6443"},
    "pki": {"leaf_ttl": "24h"},
    "policy": {"bind_cidrs": False},  # the tests log in from 127.0.0.1, not from the node IPs
    "nodes": {
        "control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"], "sans": ["cp-1.demo.example"]}],
        "workers": [{"name": "worker-1", "ips": ["10.0.1.1"]}, {"name": "worker-2", "ips": ["10.0.1.2"]}],
    },
}


def write_cluster(tmp_path: Path, prefix: str, **overrides):
    data = {**CLUSTER, "vault": {"mount_prefix": prefix}, **overrides}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, load_config(path)


def cli(env: dict[str, str], *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))} | env
    if token is not None:
        full["VAULT_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "vaultk8s", *args], env=full, capture_output=True, text=True,
                          timeout=120)


def call(env: dict[str, str], token: str, method: str, path: str, data: dict | None = None) -> requests.Response:
    return requests.request(method, f"{env['VAULT_ADDR']}/v1/{path}", headers={"X-Vault-Token": token},
                            json=data, timeout=30, verify=env.get("VAULT_CACERT", True))


def make_token(env: dict[str, str], policies: list[str]) -> str:
    """A token holding exactly these policies (no default policy), made with the admin token."""
    resp = call(env, env["VAULT_TOKEN"], "POST", "auth/token/create",
                {"policies": policies, "no_default_policy": True, "ttl": "10m"})
    resp.raise_for_status()
    return resp.json()["auth"]["client_token"]


def applied_cluster(env: dict[str, str], tmp_path: Path, prefix: str, **overrides):
    """policy apply (admin) then bootstrap with an operator-only token: returns (path, config, operator token)."""
    from vaultk8s.plan.naming import policy_name

    path, config = write_cluster(tmp_path, prefix, **overrides)
    applied = cli(env, "policy", "apply", "-c", str(path))
    assert applied.returncode == 0, applied.stderr
    operator = make_token(env, [policy_name(config, "operator")])
    boot = cli(env, "bootstrap", "-c", str(path), "-o", str(tmp_path / "out"), token=operator)
    assert boot.returncode == 0, boot.stderr
    return path, config, operator


def write_node_credentials(env, path, node, out, operator):
    """`vaultk8s node credentials --token` with the operator's token."""
    made = cli(env, "node", "credentials", "-c", str(path), "--node", node, "--out", str(out), "--token", token=operator)
    assert made.returncode == 0, made.stderr


def approle_login(env, config, out):
    """A plain AppRole login over HTTP with the files `node credentials` wrote."""
    from vaultk8s.plan import naming

    return call(env, "", "POST", f"auth/{naming.approle_mount(config)}/login",
                {"role_id": (out / "role_id").read_text(), "secret_id": (out / "secret_id").read_text()})


def can_sign(env, config, token, node):
    resp = call(env, token, "POST", f"{config.mount('kubernetes-ca')}/sign/kubelet-client-{node}", {"csr": "x"})
    return resp.status_code != 403  # 400 (bad CSR) means the policy let the request through
