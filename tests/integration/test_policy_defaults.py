"""`policy apply`, `diff` and `review` with the settings a user gets: bind_cidrs on (the default),
on a cluster with IPv4, IPv6 and dual-stack nodes. Vault stores `10.0.1.1/32` as `10.0.1.1` and
`fd00:10::1/128` as `fd00:10::1`; diff must see that as no drift, or it never comes clean.
"""

from __future__ import annotations

import json

import pytest
import yaml

from vaultk8s.config import load_config
from vaultk8s.plan import naming

from tests.helpers.policy import call, cli, make_token

pytestmark = pytest.mark.integration

DUAL_STACK = {
    "cluster": {"name": "dflt", "endpoint": "https://[fd00:10::10]:6443", "service_cidr": "fd00:96::/108"},
    "nodes": {
        "control_plane": [{"name": "cp-1", "ips": ["10.0.0.11", "fd00:10::11"]}],
        "workers": [{"name": "worker-1", "ips": ["10.0.1.1"]},
                    {"name": "worker-6", "ips": ["fd00:10:0:0:0:0:0:0106"]}],  # stored compressed
    },
}


@pytest.fixture
def cluster(tmp_path, mount_prefix):
    doc = {**DUAL_STACK, "vault": {"mount_prefix": mount_prefix}}
    assert "policy" not in doc  # the defaults, on purpose
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, load_config(path)


def test_bound_cidrs_are_what_the_defaults_write(vault_env, cluster):
    path, config = cluster
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    role = call(vault_env, vault_env["VAULT_TOKEN"], "GET", f"auth/{naming.approle_mount(config)}/role/node-worker-6")
    assert role.json()["data"]["token_bound_cidrs"] == ["fd00:10::106"]  # how OpenBao normalises it


def test_diff_is_clean_right_after_apply_with_defaults(vault_env, cluster):
    path, config = cluster
    first = cli(vault_env, "policy", "apply", "-c", str(path))
    assert first.returncode == 0, first.stderr
    again = cli(vault_env, "policy", "apply", "-c", str(path))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
    diff = cli(vault_env, "policy", "diff", "-c", str(path))
    assert diff.returncode == 0, diff.stdout + diff.stderr
    auditor = make_token(vault_env, [naming.policy_name(config, "auditor")])
    assert cli(vault_env, "policy", "diff", "-c", str(path), token=auditor).returncode == 0


def test_a_changed_node_ip_is_still_drift(vault_env, cluster):
    """Normalising must not hide a real change: another address is drift, and apply repairs it."""
    path, config = cluster
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    role = f"auth/{naming.approle_mount(config)}/role/node-worker-6"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "POST", role, {"token_bound_cidrs": ["fd00:10::107/128"]}).ok
    drift = cli(vault_env, "policy", "diff", "-c", str(path))
    assert drift.returncode == 1 and "token_bound_cidrs" in drift.stdout
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    assert cli(vault_env, "policy", "diff", "-c", str(path)).returncode == 0


def test_review_with_defaults_has_no_high_findings(vault_env, cluster):
    path, config = cluster
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    auditor = make_token(vault_env, [naming.policy_name(config, "auditor")])
    review = cli(vault_env, "policy", "review", "-c", str(path), "--output", "json", token=auditor)
    assert review.returncode == 0, review.stdout + review.stderr
    assert json.loads(review.stdout)["high"] == 0
