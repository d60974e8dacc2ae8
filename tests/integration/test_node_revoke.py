"""`node revoke`: the node's secret_ids stop logging in and its live tokens stop working, other nodes unaffected."""

from __future__ import annotations

import pytest


from tests.helpers.policy import applied_cluster, approle_login, can_sign, cli, write_node_credentials

pytestmark = pytest.mark.integration


def test_revoke_kills_secret_ids_and_tokens_of_that_node_only(vault_env, tmp_path, mount_prefix):
    path, config, operator = applied_cluster(vault_env, tmp_path, mount_prefix)
    w1, w2 = tmp_path / "w1", tmp_path / "w2"
    write_node_credentials(vault_env, path, "worker-1", w1, operator)
    # a second secret_id in another directory (written over w1, the first would be destroyed); both must go
    write_node_credentials(vault_env, path, "worker-1", tmp_path / "w1-again", operator)
    write_node_credentials(vault_env, path, "worker-2", w2, operator)
    token1 = approle_login(vault_env, config, w1).json()["auth"]["client_token"]
    plain1 = (w1 / "token").read_text()
    token2 = approle_login(vault_env, config, w2).json()["auth"]["client_token"]
    assert can_sign(vault_env, config, token1, "worker-1") and can_sign(vault_env, config, plain1, "worker-1")

    revoked = cli(vault_env, "node", "revoke", "-c", str(path), "--node", "worker-1", "--output", "json", token=operator)
    assert revoked.returncode == 0, revoked.stderr
    assert '"secret_ids_destroyed": 2' in revoked.stdout

    assert approle_login(vault_env, config, w1).status_code in (400, 403)
    assert not can_sign(vault_env, config, token1, "worker-1")
    assert not can_sign(vault_env, config, plain1, "worker-1")
    assert can_sign(vault_env, config, token2, "worker-2")

    # Re-admission is an admin decision: credentials refuse until `policy apply --readmit` gives the
    # node a new identity; a plain re-run of `policy apply` keeps it out (test_node_identity.py).
    again = cli(vault_env, "node", "credentials", "-c", str(path), "--node", "worker-1", "--out", str(w1), token=operator)
    assert again.returncode != 0 and "policy apply --readmit worker-1" in again.stderr
    assert cli(vault_env, "policy", "apply", "-c", str(path), "--readmit", "worker-1").returncode == 0
    write_node_credentials(vault_env, path, "worker-1", w1, operator)
    fresh = approle_login(vault_env, config, w1).json()["auth"]["client_token"]
    assert can_sign(vault_env, config, fresh, "worker-1")
    assert not can_sign(vault_env, config, token1, "worker-1")  # the old token stays dead
