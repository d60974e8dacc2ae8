"""Role parameters: each role pins one identity and closes every widening default."""

from pathlib import Path

import pytest

from vaultk8s.config import load_config
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.plan.roles import resolve_roles, role_drift

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"


def _roles():
    return {(r.mount, r.name): r.params for r in resolve_roles(resolve_all(load_config(EXAMPLE)))}


def test_one_role_per_identity():
    roles = _roles()
    names = {name for _, name in roles}
    assert {"kubelet-client-worker-1", "kubelet-client-worker-2", "kubelet-client-cp-1", "kube-proxy",
            "etcd-server-cp-1", "apiserver-cp-1", "admin", "super-admin"} <= names
    # 9 shared identities, 5 per-node roles for cp-1, 2 (kubelet client/serving) per worker
    assert len(roles) == 9 + 5 + 2 * 2


def test_no_role_widens():
    for (mount, name), p in _roles().items():
        assert p["allow_any_name"] is False and p["allow_glob_domains"] is False
        assert p["allow_subdomains"] is False and p["allow_wildcard_certificates"] is False
        assert "disabled" not in p["cn_validations"]
        assert p["ttl"] == p["max_ttl"] == 86400
        assert not any("*" in d for d in p["allowed_domains"])
        assert all(c.endswith("/32") or c.endswith("/128") for c in p["allowed_ip_sans_cidr"])
        assert p["allow_ip_sans"] == bool(p["allowed_ip_sans_cidr"])
        assert p["allowed_uri_sans"] == [] and p["allowed_other_sans"] == []
        assert p["code_signing_flag"] is False and p["email_protection_flag"] is False


def test_colon_names_switch_off_hostname_enforcement_only_where_needed():
    roles = _roles()
    node = roles[("kubernetes-ca", "kubelet-client-worker-1")]
    assert node["allowed_domains"] == ["system:node:worker-1"] and node["enforce_hostnames"] is False
    assert node["organization"] == ["system:nodes"] and node["client_flag"] and not node["server_flag"]
    etcd = roles[("etcd-ca", "etcd-server-cp-1")]
    assert etcd["enforce_hostnames"] is True and etcd["allow_localhost"] is True
    assert etcd["server_flag"] and etcd["client_flag"]
    assert roles[("kubernetes-ca", "admin")]["organization"] == ["kubeadm:cluster-admins"]
    assert roles[("kubernetes-ca", "kube-proxy")]["allow_localhost"] is False


def test_role_drift():
    params = _roles()[("kubernetes-ca", "admin")]
    assert role_drift(params, None) == ["(missing)"]
    observed = dict(params, allowed_domains=list(reversed(params["allowed_domains"])), extra=1)
    assert role_drift(params, observed) == []
    assert role_drift(params, dict(params, allow_any_name=True)) == ["allow_any_name"]


@pytest.mark.parametrize(("desired", "observed"), [
    (["10.20.1.1/32"], ["10.20.1.1"]),
    (["fd00:10::106/128"], ["fd00:10::106"]),
    (["fd00:10:0:0:0:0:0:0106/128"], ["fd00:10::106"]),
    (["10.0.0.0/24", "10.0.1.1/32"], ["10.0.1.1", "10.0.0.0/24"]),
])
def test_cidrs_compare_by_meaning(desired, observed):
    assert role_drift({"token_bound_cidrs": desired}, {"token_bound_cidrs": observed}) == []


@pytest.mark.parametrize(("desired", "observed"), [
    (["10.20.1.1/32"], ["10.20.1.2"]),
    (["10.0.0.0/24"], ["10.0.0.0"]),
    (["fd00::1/128"], []),
])
def test_other_cidrs_are_drift(desired, observed):
    assert role_drift({"token_bound_cidrs": desired}, {"token_bound_cidrs": observed}) == ["token_bound_cidrs"]
