"""Real tokens made from the real policies, against a real OpenBao: what each identity can and cannot do."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.x509.oid import NameOID

from vaultk8s import catalog, crypto
from vaultk8s.plan import grants, naming
from vaultk8s.plan.resolve import resolve_cert

from tests.helpers.policy import applied_cluster, call, cli, make_token

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(vault_env, tmp_path, mount_prefix):
    return applied_cluster(vault_env, tmp_path, mount_prefix)


def _approle_token(env, path, node, out, operator) -> str:
    made = cli(env, "node", "credentials", "-c", str(path), "--node", node, "--out", str(out), "--token", token=operator)
    assert made.returncode == 0, made.stderr
    assert "s." not in made.stdout and (out / "secret_id").read_text() not in made.stdout  # files, not stdout
    for name in ("role_id", "secret_id", "token"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
    mount = (out / "approle_mount").read_text()
    resp = call(env, "", "POST", f"auth/{mount}/login",  # a plain AppRole login, no vaultk8s code
                {"role_id": (out / "role_id").read_text(), "secret_id": (out / "secret_id").read_text()})
    assert resp.status_code == 200, resp.text
    return resp.json()["auth"]["client_token"]


def _sign(env, token, mount, role, cn, org=None, dns=(), ips=()):
    key = crypto.generate_key("ec-p256")
    csr = crypto.build_csr(key, cn, org, tuple(dns), tuple(ips))
    return call(env, token, "POST", f"{mount}/sign/{role}", {"csr": csr, "ttl": "1h"})


def _allowed_signs(config, node_name, kinds):
    node = config.node(node_name)
    for ident in catalog.IDENTITIES:
        if ident.name in kinds:
            for name in ident.certs:
                yield resolve_cert(catalog.cert(name), node, config)


def _assert_signs(env, token, rc):
    resp = _sign(env, token, rc.mount, rc.role, rc.common_name, rc.organization, rc.dns_sans, rc.ip_sans)
    assert resp.status_code == 200, f"{rc.role}: {resp.text}"
    cert = crypto.load_cert(resp.json()["data"]["certificate"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == rc.common_name


def test_every_identity_gets_exactly_its_own_certificates(vault_env, cluster, tmp_path):
    path, config, operator = cluster
    worker = _approle_token(vault_env, path, "worker-1", tmp_path / "w1", operator)
    worker_plain = (tmp_path / "w1" / "token").read_text()
    cp = _approle_token(vault_env, path, "cp-1", tmp_path / "cp1", operator)
    for token in (worker, worker_plain):
        for rc in _allowed_signs(config, "worker-1", ("node",)):
            _assert_signs(vault_env, token, rc)
    for rc in _allowed_signs(config, "cp-1", grants.node_policy_kinds(config.node("cp-1"))):
        _assert_signs(vault_env, cp, rc)
    for kind, cert_name in (("cluster-admin", "admin"), ("break-glass", "super-admin")):
        token = make_token(vault_env, [naming.policy_name(config, kind)])
        _assert_signs(vault_env, token, resolve_cert(catalog.cert(cert_name), config.node("cp-1"), config))
    for mount in (config.mount(ca.name) for ca in catalog.CAS):
        for suffix in ("cert/ca_chain", "issuer/default/json", "crl/pem"):
            assert call(vault_env, worker, "GET", f"{mount}/{suffix}").status_code == 200
    assert call(vault_env, worker, "GET", "auth/token/lookup-self").status_code == 200
    assert call(vault_env, worker, "POST", "auth/token/renew-self", {}).status_code == 200


def _forbidden_for_worker(config):
    k, e, f = (config.mount(n) for n in ("kubernetes-ca", "etcd-ca", "front-proxy-ca"))
    sign = {"csr": "x"}
    return [
        ("POST", f"{k}/sign/kubelet-client-worker-2", sign),  # another node
        ("POST", f"{k}/sign/kubelet-serving-worker-2", sign),
        ("POST", f"{k}/sign/apiserver-cp-1", sign),  # a control-plane component
        ("POST", f"{k}/sign/controller-manager", sign),
        ("POST", f"{k}/sign/apiserver-kubelet-client", sign),
        ("POST", f"{k}/sign/admin", sign),  # never admin
        ("POST", f"{k}/sign/super-admin", sign),
        ("POST", f"{e}/sign/etcd-server-cp-1", sign),  # another CA mount
        ("POST", f"{e}/sign/kubelet-client-worker-1", sign),
        ("POST", f"{f}/sign/front-proxy-client", sign),
        ("POST", f"{k}/issue/kubelet-client-worker-1", {"common_name": "system:node:worker-1"}),
        ("POST", f"{k}/sign-verbatim", sign),
        ("POST", f"{k}/sign-verbatim/kubelet-client-worker-1", sign),
        ("POST", f"{k}/sign-intermediate", sign),
        ("POST", f"{k}/root/generate/internal", {"common_name": "evil"}),
        ("DELETE", f"{k}/root", None),
        ("POST", f"{k}/intermediate/generate/internal", {"common_name": "evil"}),
        ("POST", f"{k}/config/urls", {"issuing_certificates": []}),
        ("POST", f"{k}/roles/kubelet-client-worker-1", {"allow_any_name": True}),
        ("GET", f"{k}/roles/kubelet-client-worker-1", None),
        ("POST", f"{k}/revoke", {"serial_number": "00"}),
        ("GET", "sys/mounts", None),
        ("POST", f"sys/policies/acl/{naming.policy_name(config, 'node')}", {"policy": ""}),
        ("POST", "auth/token/create", {}),
        ("POST", f"identity/entity/name/{naming.entity_name(config, 'worker-1')}", {"metadata": {"node": "worker-2"}}),
        ("GET", f"auth/{naming.approle_mount(config)}/role/node-worker-2/role-id", None),
        ("POST", f"auth/{naming.approle_mount(config)}/role/node-worker-2/secret-id", {}),
    ]


def test_worker_is_denied_everything_else(vault_env, cluster, tmp_path):
    path, config, operator = cluster
    worker = _approle_token(vault_env, path, "worker-1", tmp_path / "w1", operator)
    auditor = make_token(vault_env, [naming.policy_name(config, "auditor")])
    for method, target, data in _forbidden_for_worker(config):
        assert call(vault_env, worker, method, target, data).status_code == 403, f"worker: {method} {target}"
    for method, target, data in _forbidden_for_worker(config):
        if method == "GET" and "/roles/" in target:
            continue  # the auditor reads roles on purpose
        assert call(vault_env, auditor, method, target, data).status_code == 403, f"auditor: {method} {target}"


def test_own_role_refuses_another_nodes_names_and_pins_o(vault_env, cluster, tmp_path):
    path, config, operator = cluster
    worker = _approle_token(vault_env, path, "worker-1", tmp_path / "w1", operator)
    k = config.mount("kubernetes-ca")
    import ipaddress
    assert _sign(vault_env, worker, k, "kubelet-client-worker-1", "system:node:worker-2").status_code == 400
    assert _sign(vault_env, worker, k, "kubelet-serving-worker-1", "system:node:worker-1",
                 dns=["worker-2"]).status_code == 400
    assert _sign(vault_env, worker, k, "kubelet-serving-worker-1", "system:node:worker-1",
                 ips=[ipaddress.ip_address("10.0.1.2")]).status_code == 400
    resp = _sign(vault_env, worker, k, "kubelet-client-worker-1", "system:node:worker-1", org="system:masters")
    assert resp.status_code == 200, resp.text
    cert = crypto.load_cert(resp.json()["data"]["certificate"])
    orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    assert orgs == ["system:nodes"]


def test_wrapped_secret_id_and_unknown_node(vault_env, cluster, tmp_path):
    path, config, operator = cluster
    out = tmp_path / "w2"
    made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", "worker-2", "--out", str(out),
               "--wrap-ttl", "5m", token=operator)
    assert made.returncode == 0, made.stderr
    assert not (out / "secret_id").exists() and (out / "secret_id.wrapped").exists()
    from vaultk8s.ops.node import login_from_dir
    from vaultk8s.vault.gateway import VaultGateway
    gateway = VaultGateway.from_env({**vault_env, "VAULT_TOKEN": ""})
    token = login_from_dir(out, gateway)
    assert stat.S_IMODE(os.stat(out / "secret_id").st_mode) == 0o600
    rc = resolve_cert(catalog.cert("kubelet-client"), config.node("worker-2"), config)
    _assert_signs(vault_env, token, rc)
    bad = cli(vault_env, "node", "credentials", "-c", str(path), "--node", "nope", "--out", str(out), token=operator)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


def test_bound_cidrs_refuse_login_from_elsewhere(vault_env, tmp_path, mount_prefix):
    path, config, operator = applied_cluster(vault_env, tmp_path, mount_prefix, policy={"bind_cidrs": True})
    out = tmp_path / "w1"
    made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", "worker-1", "--out", str(out), token=operator)
    assert made.returncode == 0, made.stderr
    resp = call(vault_env, "", "POST", f"auth/{naming.approle_mount(config)}/login",
                {"role_id": (out / "role_id").read_text(), "secret_id": (out / "secret_id").read_text()})
    assert resp.status_code in (400, 403), resp.text  # we are 127.0.0.1, not 10.0.1.1
