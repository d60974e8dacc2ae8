"""Drift: a policy edited in Vault makes `policy diff` fail and `apply` fixes it; review flags weakened policies."""

from __future__ import annotations

import json

import pytest

from vaultk8s.plan import hcl, naming

from tests.helpers.policy import applied_cluster, call, cli, make_token, write_cluster

pytestmark = pytest.mark.integration


def test_edit_in_vault_is_drift_and_apply_fixes_it(vault_env, tmp_path, mount_prefix):
    path, config = write_cluster(tmp_path, mount_prefix)
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    again = cli(vault_env, "policy", "apply", "-c", str(path))
    assert again.returncode == 0 and "no changes" in again.stdout  # idempotent
    auditor = make_token(vault_env, [naming.policy_name(config, "auditor")])
    assert cli(vault_env, "policy", "diff", "-c", str(path), token=auditor).returncode == 0

    name = naming.policy_name(config, "node")
    edited = hcl.render_policy("node", config) + '\npath "*" { capabilities = ["sudo", "update"] }\n'
    assert call(vault_env, vault_env["VAULT_TOKEN"], "POST", f"sys/policies/acl/{name}", {"policy": edited}).ok
    drift = cli(vault_env, "policy", "diff", "-c", str(path), token=auditor)
    assert drift.returncode == 1 and name in drift.stdout and '-path "*"' in drift.stdout

    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    assert cli(vault_env, "policy", "diff", "-c", str(path), token=auditor).returncode == 0


def test_auth_role_edit_is_drift(vault_env, tmp_path, mount_prefix):
    path, config = write_cluster(tmp_path, mount_prefix)
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    role = f"auth/{naming.approle_mount(config)}/role/node-worker-1"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "POST", role, {"token_ttl": "720h", "token_max_ttl": "720h"}).ok
    drift = cli(vault_env, "policy", "diff", "-c", str(path))
    assert drift.returncode == 1 and "token_ttl" in drift.stdout
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    assert cli(vault_env, "policy", "diff", "-c", str(path)).returncode == 0


@pytest.mark.parametrize("extra", [
    'path "kubernetes-ca/sign/*" { capabilities = ["update"] }',
    'path "kubernetes-ca/sign-verbatim" { capabilities = ["update"] }',
    'path "kubernetes-ca/sign/kube-proxy" { capabilities = ["update", "sudo"] }',
])
def test_review_flags_weakened_policy_in_vault(vault_env, tmp_path, mount_prefix, extra):
    path, config, _ = applied_cluster(vault_env, tmp_path, mount_prefix)
    auditor = make_token(vault_env, [naming.policy_name(config, "auditor")])
    clean = cli(vault_env, "policy", "review", "-c", str(path), "--output", "json", token=auditor)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["high"] == 0
    extra = extra.replace("kubernetes-ca", config.mount("kubernetes-ca"))
    name = naming.policy_name(config, "node")
    weakened = hcl.render_policy("node", config) + "\n" + extra + "\n"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "POST", f"sys/policies/acl/{name}", {"policy": weakened}).ok
    flagged = cli(vault_env, "policy", "review", "-c", str(path), "--output", "markdown", token=auditor)
    assert flagged.returncode == 1 and "| high | `node` |" in flagged.stdout


def test_review_flags_weakened_role_in_vault(vault_env, tmp_path, mount_prefix):
    path, config, _ = applied_cluster(vault_env, tmp_path, mount_prefix)
    role = f"{config.mount('kubernetes-ca')}/roles/kubelet-client-worker-1"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "POST", role, {"allow_any_name": True}).ok
    flagged = cli(vault_env, "policy", "review", "-c", str(path))
    assert flagged.returncode == 1 and "allow_any_name" in flagged.stdout
