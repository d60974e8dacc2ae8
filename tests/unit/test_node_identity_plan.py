"""A node's certificate login, planned: the cert entry, its names, who may touch it, pruning. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from vaultk8s import crypto
from vaultk8s.config import parse_config
from vaultk8s.plan import grants, machine_auth, naming, prune

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 3, tzinfo=timezone.utc)


def _config(policy: dict | None = None, drop: tuple[str, ...] = (), prefix: str = "c1/"):
    doc = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())
    nodes = {group: [n for n in doc["nodes"][group] if n["name"] not in drop] for group in doc["nodes"]}
    return parse_config(doc | {"vault": {"mount_prefix": prefix}, "nodes": nodes, "policy": policy or {}})


@pytest.fixture(scope="module")
def config():
    return _config()


def test_enrolment_lifetime_defaults_to_24h(config):
    assert config.policy.secret_id_ttl == timedelta(hours=24)
    node = config.nodes[0]
    assert machine_auth.approle_params(config, node)["secret_id_ttl"] == 86400


def test_cert_entry_pins_the_nodes_cn_and_carries_its_approle_policies(config):
    for node in config.nodes:
        params = machine_auth.cert_entry_params(config, node, "PEM")
        approle = machine_auth.approle_params(config, node)
        assert params["allowed_common_names"] == [f"system:node:{node.name}"]
        assert params["token_policies"] == approle["token_policies"]
        assert params["token_bound_cidrs"] == approle["token_bound_cidrs"] != []
        assert params["token_no_default_policy"] is True and params["token_type"] == "service"
        assert {k: params[k] for k in ("token_ttl", "token_max_ttl", "token_num_uses")} == \
               {k: approle[k] for k in ("token_ttl", "token_max_ttl", "token_num_uses")}
        assert params["certificate"] == "PEM"
    unbound = _config({"bind_cidrs": False})
    assert machine_auth.cert_entry_params(unbound, unbound.nodes[0], "PEM")["token_bound_cidrs"] == []


def test_cert_names_and_their_inverse(config):
    assert naming.cert_mount(config) == "c1/cert"
    assert naming.cert_mount(_config(prefix="")) == "cert"
    assert naming.cert_entry("worker-1") == "node-worker-1" == naming.approle_role("worker-1")
    assert naming.node_of_cert_entry(naming.cert_entry("worker-1")) == "worker-1"
    assert naming.node_of_cert_entry("csr-signer") is None


def test_agent_may_destroy_only_its_own_secret_id(config):
    paths = {g.path: g for g in grants.grants_for(grants.AGENT, config)}
    destroy = f"auth/c1/approle/role/node-{naming.NODE_TEMPLATE}/secret-id/destroy"
    assert paths[destroy].capabilities == ("update",)
    assert not any("+" in p or "*" in p for p in paths)


def test_operator_may_change_only_the_trust_of_cert_entries(config):
    on_cert = [g for g in grants.grants_for(grants.OPERATOR, config) if g.path.startswith("auth/c1/cert/")]
    assert sorted(g.path for g in on_cert) == sorted(f"auth/c1/cert/certs/node-{n.name}" for n in config.nodes)
    for grant in on_cert:
        assert grant.allowed_parameters == (("certificate", ()),)
        assert "create" not in grant.capabilities


def test_removed_nodes_cert_entry_is_stale_a_foreign_one_is_kept(config):
    shrunk = _config(drop=("worker-2",))
    ours = machine_auth.cert_entry_params(config, config.node("worker-2"), "PEM")
    plan = prune.plan_prune(shrunk, prune.Observed(cert_entries={"node-worker-2": ours}))
    assert [(s.kind, s.node, s.path) for s in plan.stale] == [
        (prune.CERT_ENTRY, "worker-2", "auth/c1/cert/certs/node-worker-2")]
    foreign = dict(ours, token_policies=["someone-elses"])
    kept = prune.plan_prune(shrunk, prune.Observed(cert_entries={"node-worker-2": foreign}))
    assert not kept.stale and kept.skipped[0].kind == prune.CERT_ENTRY
    assert prune.candidate_cert_entries(shrunk, ["node-worker-1", "node-worker-2", "other"]) == ["node-worker-2"]


def test_entity_with_a_cert_alias_is_still_ours(config):
    node = config.node("worker-2")
    name = naming.entity_name(config, "worker-2")
    entity = {"name": name, "metadata": machine_auth.entity_metadata(config, node),
              "aliases": [{"mount_accessor": "acc_cert", "name": "system:node:worker-2"}]}
    assert prune.entity_problem(config, name, entity, "acc_approle", "acc_cert", "acc_token") is None
    assert prune.entity_problem(config, name, entity, "acc_approle", None, "acc_token") is not None


def test_same_certificates_ignores_order_and_rejects_garbage():
    a = crypto.unusable_anchor("a", NOW)
    b = crypto.unusable_anchor("b", NOW)
    assert crypto.same_certificates(a + b, b + a)
    assert not crypto.same_certificates(a, a + b)
    assert not crypto.same_certificates("not a pem", "not a pem")
    assert crypto.load_certs(a)[0].extensions.get_extension_for_class(
        crypto.x509.BasicConstraints).value.ca
