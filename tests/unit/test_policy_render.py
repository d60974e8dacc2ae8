"""Policy rendering is golden against policies/, and the review lint catches weakened policies and roles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from vaultk8s import catalog
from vaultk8s.config import load_config, parse_config
from vaultk8s.errors import ConfigError
from vaultk8s.ops.policy import review_offline
from vaultk8s.plan import grants, hcl, machine_auth, naming
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.plan.review import review
from vaultk8s.plan.roles import resolve_roles

ROOT = Path(__file__).resolve().parents[2]


def _example_doc() -> dict:
    return yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "examples" / "cluster.yaml")


def _texts(config, **overrides):
    texts = {k: hcl.render_policy(k, config) for k in grants.policy_kinds()}
    texts.update(overrides)
    return texts


def _roles(config):
    return {(r.mount, r.name): dict(r.params) for r in resolve_roles(resolve_all(config))}


def test_committed_policies_match_render(config):
    rendered = hcl.render_policies(config)
    committed = {p.name: p.read_text() for p in (ROOT / "policies").glob("*.hcl")}
    assert committed == rendered, "policies/ drifted: run `vaultk8s policy render -c examples/cluster.yaml`"


def test_render_is_deterministic_and_sorted(config):
    assert hcl.render_policies(config) == hcl.render_policies(config)
    for kind in grants.policy_kinds():
        paths = [g.path for g in hcl.parse_policy(hcl.render_policy(kind, config))[0]]
        assert paths == sorted(paths)


def test_every_cert_has_exactly_one_identity():
    for spec in catalog.CERTS:
        assert sum(spec.name in i.certs and not i.every_node for i in catalog.IDENTITIES) == 1, spec.name


def test_committed_policies_review_clean(config):
    result = review_offline(config, ROOT / "policies")
    assert result.high == []
    assert not [f for f in result.findings if "no node or person policy" in f.message]
    assert {r.role for r in result.rows} == {r.name for r in resolve_roles(resolve_all(config))}


def test_node_grants_are_templated_never_globbed(config):
    node_hcl = hcl.render_policy("node", config)
    assert "kubernetes-ca/sign/kubelet-client-{{identity.entity.metadata.node}}" in node_hcl
    for kind in grants.policy_kinds():
        if kind in (grants.OPERATOR, grants.AUDITOR):
            continue
        for grant in hcl.parse_policy(hcl.render_policy(kind, config))[0]:
            assert "*" not in grant.path and "+" not in grant.path
            assert "sudo" not in grant.capabilities
            assert "/issue/" not in grant.path


def test_worker_credential_carries_no_control_plane_policy(config):
    worker, cp = config.node("worker-1"), config.node("cp-1")
    assert grants.node_policy_kinds(worker) == ("agent", "node")
    assert "control-plane-etcd" in grants.node_policy_kinds(cp)
    for node in config.nodes:
        assert not {"cluster-admin", "break-glass", "operator"} & set(grants.node_policy_kinds(node))


WEAKENED = {
    "sudo": 'path "kubernetes-ca/sign/kube-proxy" { capabilities = ["create", "update", "sudo"] }',
    "sign-verbatim": 'path "kubernetes-ca/sign-verbatim" { capabilities = ["update"] }',
    "sign-verbatim-role": 'path "kubernetes-ca/sign-verbatim/kube-proxy" { capabilities = ["update"] }',
    "crossing glob": 'path "*/sign/kube-proxy" { capabilities = ["update"] }',
    "crossing mount glob": 'path "kube*" { capabilities = ["update"] }',
    "sys": 'path "sys/policies/acl/x" { capabilities = ["update"] }',
    "roles write": 'path "kubernetes-ca/roles/kube-proxy" { capabilities = ["update"] }',
    "root": 'path "kubernetes-ca/root/generate/internal" { capabilities = ["update"] }',
    "intermediate": 'path "kubernetes-ca/intermediate/set-signed" { capabilities = ["update"] }',
    "sign-intermediate": 'path "kubernetes-ca/sign-intermediate" { capabilities = ["update"] }',
    "revoke": 'path "kubernetes-ca/revoke" { capabilities = ["update"] }',
    "other template": 'path "kubernetes-ca/sign/kubelet-client-{{identity.entity.name}}" { capabilities = ["update"] }',
    "token create": 'path "auth/token/create" { capabilities = ["update"] }',
    "overlap": 'path "kubernetes-ca/sign/admin" { capabilities = ["create", "update"] }',
    "parameters": 'path "kubernetes-ca/sign/kube-proxy" { capabilities = ["update"] allowed_parameters = {} }',
    "parameter limits": 'path "auth/token/create" { capabilities = ["update"] allowed_parameters = { "policies" = [] } }',
}


@pytest.mark.parametrize("name", sorted(WEAKENED))
def test_weakened_node_policy_is_flagged_high(config, name):
    weakened = hcl.render_policy("node", config) + "\n" + WEAKENED[name] + "\n"
    result = review(config, _texts(config, node=weakened), _roles(config))
    assert result.high, name


def test_wildcard_inside_own_mount_is_reported(config):
    weakened = hcl.render_policy("node", config) + '\npath "kubernetes-ca/sign/kubelet-*" { capabilities = ["update"] }\n'
    result = review(config, _texts(config, node=weakened), _roles(config))
    assert any(f.subject == "kubernetes-ca/sign/kubelet-*" and "wildcard" in f.message for f in result.findings)


def test_extra_operator_power_is_high_but_rendered_operator_is_info(config):
    clean = review(config, _texts(config), _roles(config))
    assert all(f.severity == "info" for f in clean.findings if f.identity == "operator")
    weakened = hcl.render_policy("operator", config) + '\npath "sys/*" { capabilities = ["sudo", "update"] }\n'
    result = review(config, _texts(config, operator=weakened), _roles(config))
    assert {f.subject for f in result.high} == {"sys/*"}


@pytest.mark.parametrize("change, needle", [
    ({"allow_any_name": True}, "allow_any_name"),
    ({"cn_validations": ["disabled"]}, "cn_validations"),
    ({"organization": ["system:masters"]}, "O not pinned"),
    ({"max_ttl": 10 * 86400}, "max_ttl"),
    ({"allow_glob_domains": True}, "allow_glob_domains"),
])
def test_weakened_role_is_flagged_high(config, change, needle):
    roles = _roles(config)
    roles[("kubernetes-ca", "kubelet-client-worker-1")].update(change)
    result = review(config, _texts(config), roles)
    assert any(needle in f.message for f in result.high)


def test_unused_role_is_reported(config):
    roles = _roles(config)
    roles[("kubernetes-ca", "stray")] = dict(roles[("kubernetes-ca", "kube-proxy")])
    result = review(config, _texts(config), roles)
    assert any(f.subject == "kubernetes-ca/roles/stray" and "no node" in f.message for f in result.findings)


def test_prefix_is_in_every_name_and_path():
    data = _example_doc() | {"vault": {"mount_prefix": "clusters/demo/"}}
    config = parse_config(data)
    assert naming.policy_name(config, "node") == "vaultk8s-clusters-demo-node"
    assert naming.approle_mount(config) == "clusters/demo/approle"
    for kind in grants.policy_kinds():
        for grant in grants.grants_for(kind, config):
            if grant.path == "identity/entity/name":  # the auditor lists names to find removed nodes
                assert kind == grants.AUDITOR and grant.capabilities == ("list",)
                continue
            assert "clusters/demo/" in grant.path or grant.path.startswith(("auth/token/", "sys/auth", "sys/policies/acl/vaultk8s-clusters-demo-", "identity/entity/name/vaultk8s-clusters-demo-"))


def test_policy_section_is_validated():
    data = _example_doc() | {"policy": {"token_ttl": "5h", "token_max_ttl": "1h", "bogus": 1}}
    with pytest.raises(ConfigError, match="bogus.*|token_ttl"):
        parse_config(data)


def test_bound_cidrs_are_node_ips(config):
    params = machine_auth.approle_params(config, config.node("worker-1"))
    assert params["secret_id_bound_cidrs"] == params["token_bound_cidrs"] == ["10.0.1.1/32"]
    assert params["token_no_default_policy"] and params["token_num_uses"] > 0


def test_node_name_that_collides_with_a_shared_role_is_high():
    data = _example_doc()
    bad = data | {"nodes": {"control_plane": [{"name": "kubelet-client", "ips": ["10.0.0.11"]}]}}
    with pytest.raises(ConfigError, match="rename the node"):
        parse_config(bad)  # the cluster file rejects it; review still catches it in a config built otherwise
    good = parse_config(data)
    config = dataclasses.replace(good, control_plane=(dataclasses.replace(good.control_plane[0], name="kubelet-client"),))
    result = review(config, _texts(config), _roles(config))
    assert any("rename the node" in f.message for f in result.high)


def test_operator_service_account_grants_are_exactly_the_key_sets_paths(config):
    kv = [g for g in grants.grants_for(grants.OPERATOR, config) if g.path.startswith("vaultk8s/")]
    assert {(g.path, tuple(sorted(g.capabilities))) for g in kv} == {
        ("vaultk8s/data/demo/service-account", ("create", "read", "update")),
        ("vaultk8s/metadata/demo/service-account", ("create", "read", "update")),
        ("vaultk8s/destroy/demo/service-account", ("update",)),
    }


def test_csr_signer_signs_exactly_every_nodes_kubelet_roles(config):
    signs = {g.path for g in grants.grants_for(grants.CSR_SIGNER, config) if "/sign/" in g.path}
    assert signs == {f"kubernetes-ca/sign/{c}-{n.name}" for c in ("kubelet-client", "kubelet-serving")
                     for n in config.nodes}
    assert grants.CSR_SIGNER not in {k for n in config.nodes for k in grants.node_policy_kinds(n)}
    params = machine_auth.signer_approle_params(config)
    assert params["token_policies"] == ["vaultk8s-agent", "vaultk8s-csr-signer"] and params["token_no_default_policy"]


def test_the_signers_secret_id_has_no_use_limit_whatever_enrolment_gets(config):
    """It logs in with one secret_id many times (every 2/3 of a token) until it replaces it; a use
    limit meant for enrolment would end the signer's logins after a few."""
    limited = dataclasses.replace(config, policy=dataclasses.replace(config.policy, secret_id_num_uses=2))
    assert machine_auth.signer_approle_params(limited)["secret_id_num_uses"] == 0
    assert machine_auth.approle_params(limited, limited.nodes[0])["secret_id_num_uses"] == 2


@pytest.mark.parametrize("extra", [
    'path "kubernetes-ca/sign/apiserver-cp-1" { capabilities = ["create", "update"] }',
    'path "kubernetes-ca/sign/kube-proxy" { capabilities = ["create", "update"] }',
    'path "kubernetes-ca/sign/kubelet-*" { capabilities = ["update"] }',
    'path "kubernetes-ca/sign-verbatim" { capabilities = ["update"] }',
])
def test_csr_signer_beyond_kubelet_roles_is_high(config, extra):
    clean = review(config, _texts(config), _roles(config))
    assert not clean.high
    assert any(f.identity == grants.CSR_SIGNER and f.severity == "info" for f in clean.findings)
    weakened = hcl.render_policy(grants.CSR_SIGNER, config) + "\n" + extra + "\n"
    assert review(config, _texts(config, **{grants.CSR_SIGNER: weakened}), _roles(config)).high


def test_allowed_parameters_render_and_parse_back() -> None:
    grant = grants.Grant("auth/x/cert/certs/node-a", ("update",), "trust bundle only",
                         allowed_parameters=(("certificate", ()), ("display_name", ("node-a",))))
    text = hcl.render_policy("agent", load_config(ROOT / "examples" / "cluster.yaml")) + (
        '\npath "auth/x/cert/certs/node-a" {\n  capabilities = ["update"]\n  allowed_parameters = {\n'
        '    "certificate" = []\n    "display_name" = ["node-a"]\n  }\n}\n')
    parsed, leftovers = hcl.parse_policy(text)
    assert leftovers == []
    assert parsed[-1].key == grant.key


def test_parser_reports_what_it_does_not_render() -> None:
    text = ('path "a" {\n  capabilities = ["read"]\n  denied_parameters = {\n    "x" = []\n  }\n}\n'
            'path "b" {\n  capabilities = ["read"]\n  allowed_parameters = {\n    "y" = []\n    junk\n  }\n}\n'
            'path "c" { capabilities = ["read"] }\nstray = 1\n')
    parsed, leftovers = hcl.parse_policy(text)
    assert [g.path for g in parsed] == ["a", "b", "c"]
    assert any(piece.startswith("a: denied_parameters") for piece in leftovers)
    assert any(piece.startswith("b:") and "junk" in piece for piece in leftovers)
    assert any("stray" in piece for piece in leftovers)
