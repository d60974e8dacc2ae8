"""Credentials written over a directory destroy the secret_id it held, on a real OpenBao.

Before, `signer-credentials` and `node credentials` overwrote the file and left the old secret_id
alive in Vault until its TTL: worth as much as any copy of the directory made before, and shown by
`vaultk8s status` as one more secret_id. Now the old one is destroyed once the new one is written,
with the operator's token and grant; a directory holding another role's files is left alone, and a
token without the grant (a cluster whose policies predate it) gets a warning, not a failure.
"""

from __future__ import annotations

import json

import pytest

from vaultk8s.plan import naming

from tests.helpers.policy import applied_cluster, call, cli, make_token

pytestmark = pytest.mark.integration


def _known(env, config, role: str, secret_id: str) -> bool:
    """Vault still holds this secret_id (a root lookup: failed logins would lock the role_id out)."""
    resp = call(env, env["VAULT_TOKEN"], "POST", f"auth/{naming.approle_mount(config)}/role/{role}/secret-id/lookup",
                {"secret_id": secret_id})
    return resp.status_code == 200 and bool((resp.json() or {}).get("data"))


def _accessors(env, config, role: str) -> list[str]:
    resp = call(env, env["VAULT_TOKEN"], "LIST", f"auth/{naming.approle_mount(config)}/role/{role}/secret-id")
    return resp.json()["data"]["keys"] if resp.status_code == 200 else []


@pytest.fixture
def cluster(vault_env, tmp_path, mount_prefix):
    return applied_cluster(vault_env, tmp_path, mount_prefix)


def test_signer_credentials_again_destroys_the_secret_id_it_overwrites(vault_env, cluster, tmp_path):
    path, config, operator = cluster
    out = tmp_path / "signer"
    role = naming.CSR_SIGNER_APPROLE_ROLE
    first = cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(out), token=operator)
    assert first.returncode == 0, first.stderr
    assert "destroyed" not in first.stdout  # nothing was there to destroy
    old = (out / "secret_id").read_text()
    again = cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(out), "--output", "json",
                token=operator)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["previous_secret_id"] == "destroyed" and report["warnings"] == []
    new = (out / "secret_id").read_text()
    assert new != old and not _known(vault_env, config, role, old) and _known(vault_env, config, role, new)
    assert len(_accessors(vault_env, config, role)) == 1  # status lists one secret_id, not two
    assert (out / "secret_id").stat().st_mode & 0o777 == 0o600
    assert old not in again.stdout + again.stderr and new not in again.stdout + again.stderr


def test_node_credentials_again_destroys_only_that_nodes_old_secret_id(vault_env, cluster, tmp_path):
    path, config, operator = cluster
    out = tmp_path / "creds"

    def write(node: str, *extra: str):
        made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", node, "--out", str(out), *extra,
                   token=operator)
        assert made.returncode == 0, made.stderr
        return made

    write("worker-1")
    old = (out / "secret_id").read_text()
    again = write("worker-1")
    assert "destroyed the secret_id the directory held before" in again.stdout
    assert not _known(vault_env, config, naming.approle_role("worker-1"), old)
    kept = (out / "secret_id").read_text()
    # the same directory now written for another node: worker-1's secret_id is not this role's to destroy
    other = write("worker-2", "--output", "json")
    assert json.loads(other.stdout)["previous_secret_id"] is None
    assert _known(vault_env, config, naming.approle_role("worker-1"), kept)


def test_a_token_without_the_destroy_grant_warns_and_keeps_the_new_credentials(vault_env, cluster, tmp_path):
    path, config, _ = cluster
    operator = naming.policy_name(config, "operator")
    current = call(vault_env, vault_env["VAULT_TOKEN"], "GET", f"sys/policies/acl/{operator}").json()["data"]["policy"]
    blocks = current.split("\n\n")
    older = "\n\n".join(block for block in blocks if "/secret-id/destroy" not in block)
    assert len(older) < len(current)  # the policy as it was before this grant
    name = f"{operator}-older"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "PUT", f"sys/policies/acl/{name}",
                {"policy": older}).status_code == 204
    token = make_token(vault_env, [name])
    out = tmp_path / "signer"
    assert cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(out), token=token).returncode == 0
    old = (out / "secret_id").read_text()
    again = cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(out), "--output", "json", token=token)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["previous_secret_id"] == "kept"
    assert "stays valid until its TTL" in again.stderr and "policy apply" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "Traceback" not in again.stderr
    new = (out / "secret_id").read_text()
    assert new != old and _known(vault_env, config, naming.CSR_SIGNER_APPROLE_ROLE, new)
