"""A node removed from the cluster file: `policy apply` deletes its AppRole role, token role and entity.

Its old secret_id stops logging in, its live tokens stop signing, a node re-added under the same name
does not inherit them, and another cluster on the same Vault whose names look alike is untouched.
"""

from __future__ import annotations

import json

import pytest

from vaultk8s.plan import naming

from tests.helpers.policy import (CLUSTER, applied_cluster, approle_login, call, can_sign, cli, make_token,
                                   write_cluster, write_node_credentials)

pytestmark = pytest.mark.integration


def _exists(env, path):
    return call(env, env["VAULT_TOKEN"], "GET", path).status_code == 200


def _leftovers(config, node):
    name = naming.entity_name(config, node)
    return [f"auth/{naming.approle_mount(config)}/role/{naming.approle_role(node)}",
            f"auth/{naming.cert_mount(config)}/certs/{naming.cert_entry(node)}", f"auth/token/roles/{name}",
            f"identity/entity/name/{name}"]


def test_removed_node_is_pruned_and_other_cluster_untouched(vault_env, tmp_path, mount_prefix):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    path, config, operator = applied_cluster(vault_env, tmp_path / "a", mount_prefix)
    # Cluster B nests its prefix so that its names fall under A's scheme: A's `vaultk8s-<a>node-` prefix
    # also matches B's `vaultk8s-<a>node-b-node-worker-2` (node "b-node-worker-2" for A). Content decides.
    other = {"name": "other", "endpoint": "https://10.0.0.10:6443"}
    path_b, config_b, operator_b = applied_cluster(vault_env, tmp_path / "b", f"{mount_prefix}node-b/", cluster=other)
    assert naming.entity_name(config_b, "worker-2").startswith(naming.entity_name(config, ""))

    w1, w2, b2 = tmp_path / "w1", tmp_path / "w2", tmp_path / "b2"
    write_node_credentials(vault_env, path, "worker-1", w1, operator)
    write_node_credentials(vault_env, path, "worker-2", w2, operator)
    write_node_credentials(vault_env, path_b, "worker-2", b2, operator_b)
    token1 = approle_login(vault_env, config, w1).json()["auth"]["client_token"]
    token2 = approle_login(vault_env, config, w2).json()["auth"]["client_token"]
    plain2 = (w2 / "token").read_text()
    assert can_sign(vault_env, config, token2, "worker-2") and can_sign(vault_env, config, plain2, "worker-2")

    # worker-2 leaves cluster A's file
    workers = [w for w in CLUSTER["nodes"]["workers"] if w["name"] != "worker-2"]
    write_cluster(tmp_path / "a", mount_prefix, nodes={**CLUSTER["nodes"], "workers": workers})
    auditor = make_token(vault_env, [naming.policy_name(config, "auditor")])
    drift = cli(vault_env, "policy", "diff", "-c", str(path), token=auditor)
    assert drift.returncode == 1, drift.stdout + drift.stderr
    for target in _leftovers(config, "worker-2"):
        assert target in drift.stdout, drift.stdout
    for target in _leftovers(config_b, "worker-2") + _leftovers(config, "worker-1"):
        assert f" {target} " not in drift.stdout  # never planned for deletion
    assert f"note: kept identity/entity/name/{naming.entity_name(config_b, 'worker-2')}" in drift.stdout

    planned = cli(vault_env, "policy", "apply", "-c", str(path), "--dry-run", "--output", "json")
    assert planned.returncode == 0, planned.stderr
    deletions = {a["target"] for a in json.loads(planned.stdout)["actions"] if a["kind"].startswith("delete-")}
    assert deletions == set(_leftovers(config, "worker-2"))
    assert all(_exists(vault_env, t) for t in _leftovers(config, "worker-2"))  # dry run touched nothing

    flagged = cli(vault_env, "policy", "review", "-c", str(path), "--output", "json", token=auditor)
    assert flagged.returncode == 1, flagged.stdout + flagged.stderr
    high = {f["subject"] for f in json.loads(flagged.stdout)["findings"]
            if f["severity"] == "high" and f["identity"] == "node@worker-2"}
    assert high == set(_leftovers(config, "worker-2"))

    applied = cli(vault_env, "policy", "apply", "-c", str(path))
    assert applied.returncode == 0, applied.stderr
    assert not any(_exists(vault_env, t) for t in _leftovers(config, "worker-2"))

    # worker-2's old credentials are dead: no login, no signing with tokens made before
    assert approle_login(vault_env, config, w2).status_code in (400, 403)
    assert not can_sign(vault_env, config, token2, "worker-2")
    assert not can_sign(vault_env, config, plain2, "worker-2")
    # worker-1 and cluster B are unaffected
    assert can_sign(vault_env, config, token1, "worker-1")
    assert approle_login(vault_env, config, w1).status_code == 200
    assert all(_exists(vault_env, t) for t in _leftovers(config_b, "worker-2"))
    token_b2 = approle_login(vault_env, config_b, b2).json()["auth"]["client_token"]
    assert can_sign(vault_env, config_b, token_b2, "worker-2")
    assert can_sign(vault_env, config_b, (b2 / "token").read_text(), "worker-2")
    assert cli(vault_env, "policy", "diff", "-c", str(path_b)).returncode == 0

    again = cli(vault_env, "policy", "apply", "-c", str(path))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
    assert cli(vault_env, "policy", "diff", "-c", str(path), token=auditor).returncode == 0
    clean = cli(vault_env, "policy", "review", "-c", str(path), "--output", "json", token=auditor)
    assert json.loads(clean.stdout)["high"] == 0, clean.stdout

    # Re-adding a node under the same name starts from nothing: the old credentials stay dead.
    write_cluster(tmp_path / "a", mount_prefix)
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    assert approle_login(vault_env, config, w2).status_code in (400, 403)
    assert not can_sign(vault_env, config, token2, "worker-2")
    assert not can_sign(vault_env, config, plain2, "worker-2")
