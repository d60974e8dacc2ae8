"""The CSR signer's checks (pure): each refusal has its reason; good CSRs map to the node's own role."""

from __future__ import annotations

import ipaddress
from datetime import datetime
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from vaultk8s.config import load_config
from vaultk8s.crypto import build_csr, generate_key
from vaultk8s.plan.csr_review import (CLIENT_SIGNER, SERVING_SIGNER, CsrView, Decision, review_csr,
                                      status_certificate)

ROOT = Path(__file__).resolve().parents[2]
CLIENT_USAGES = ("digital signature", "key encipherment", "client auth")  # what a 1.24 kubelet sends
SERVING_USAGES = ("digital signature", "key encipherment", "server auth")


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "examples" / "cluster.yaml")  # cp-1 10.0.0.11 + cp-1.demo.example, worker-1/2


def _csr(cn="system:node:worker-1", org="system:nodes", dns=(), ips=(), key_type="ec-p256"):
    return build_csr(generate_key(key_type), cn, org, tuple(dns), tuple(ipaddress.ip_address(i) for i in ips)).encode()


def client(request=None, username="system:node:worker-1", groups=("system:nodes", "system:authenticated"),
           **kw) -> CsrView:
    return CsrView("csr-1", CLIENT_SIGNER, username, tuple(groups), kw.pop("usages", CLIENT_USAGES),
                   request or _csr(), approved=kw.pop("approved", True), **kw)


def serving(request=None, username="system:node:worker-1", **kw) -> CsrView:
    request = request or _csr(dns=["worker-1"], ips=["10.0.1.1"])
    return CsrView("csr-2", SERVING_SIGNER, username, ("system:nodes", "system:authenticated"),
                   kw.pop("usages", SERVING_USAGES), request, approved=kw.pop("approved", True), **kw)


def test_renewal_signs_with_the_nodes_own_role_at_the_role_ttl(config):
    verdict = review_csr(client(), config)
    assert (verdict.decision, verdict.mount, verdict.role) == (Decision.SIGN, "kubernetes-ca", "kubelet-client-worker-1")
    assert verdict.ttl_seconds == 24 * 3600


def test_bootstrap_token_requester_is_accepted_for_client_certs_only(config):
    boot = dict(username="system:bootstrap:abcdef", groups=("system:bootstrappers", "system:authenticated"))
    assert review_csr(client(**boot), config).decision is Decision.SIGN
    refused = review_csr(replace(serving(), username="system:bootstrap:abcdef",
                                 groups=("system:bootstrappers",)), config)
    assert (refused.decision, refused.reason) == (Decision.FAIL, "RequesterMismatch")


@pytest.mark.parametrize("seconds, expected", [(600, 600), (3600, 3600), (10 * 86400, 86400)])
def test_expiration_seconds_is_honoured_but_clamped_to_the_role_max_ttl(config, seconds, expected):
    assert review_csr(client(expiration_seconds=seconds), config).ttl_seconds == expected


@pytest.mark.parametrize("view, reason", [
    (lambda: client(username="system:node:worker-2"), "RequesterMismatch"),  # node A asks for B's CN
    (lambda: client(username="kubernetes-admin", groups=("kubeadm:cluster-admins",)), "RequesterMismatch"),
    (lambda: client(groups=("system:authenticated",)), "RequesterMismatch"),  # name without the nodes group
    (lambda: client(_csr(org="system:masters")), "BadOrganization"),
    (lambda: client(_csr(org=None)), "BadOrganization"),
    (lambda: client(_csr(cn="kubernetes-admin")), "BadCommonName"),
    (lambda: client(_csr(cn="system:node:ghost"), username="system:node:ghost"), "UnknownNode"),
    (lambda: client(_csr(dns=["worker-1"])), "UnexpectedSANs"),
    (lambda: client(usages=("digital signature", "key encipherment", "server auth")), "BadUsages"),
    (lambda: client(usages=("digital signature", "client auth", "server auth")), "BadUsages"),
    (lambda: client(_csr(key_type="rsa-2048")), "UnsupportedKeyType"),
    (lambda: client(b"not a csr"), "BadRequest"),
    (lambda: serving(_csr(dns=["worker-1"], ips=["10.0.1.2"])), "SANNotOwned"),  # worker-2's IP
    (lambda: serving(_csr(dns=["cp-1.demo.example"], ips=["10.0.1.1"])), "SANNotOwned"),
    (lambda: serving(_csr()), "NoSANs"),
    (lambda: serving(usages=CLIENT_USAGES), "BadUsages"),  # client usages on the serving signer
])
def test_each_refusal_fails_an_approved_csr_with_its_reason(config, view, reason):
    verdict = review_csr(view(), config)
    assert (verdict.decision, verdict.reason) == (Decision.FAIL, reason), verdict.message
    assert verdict.message and "\n" not in verdict.message and not verdict.role


def test_key_types_the_cluster_does_not_use_are_refused(config):
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "system:node:worker-1")])
    pem = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, None).public_bytes(
        serialization.Encoding.PEM)
    assert review_csr(client(pem), config).reason == "UnsupportedKeyType"
    p384 = _csr(key_type="ec-p384")
    assert review_csr(client(p384), config).reason == "UnsupportedKeyType"


def test_extra_sans_and_ips_of_the_node_are_its_own(config):
    view = serving(_csr(cn="system:node:cp-1", dns=["cp-1", "cp-1.demo.example"], ips=["10.0.0.11"]),
                   username="system:node:cp-1")
    verdict = review_csr(view, config)
    assert (verdict.decision, verdict.role) == (Decision.SIGN, "kubelet-serving-cp-1")


def test_serving_approval_only_with_approve_serving(config):
    pending = serving(approved=False)
    assert review_csr(pending, config).decision is Decision.SKIP
    assert review_csr(pending, config, approve_serving=True).decision is Decision.APPROVE
    bad = serving(_csr(dns=["worker-2"]), approved=False)
    denied = review_csr(bad, config, approve_serving=True)
    assert (denied.decision, denied.reason) == (Decision.DENY, "SANNotOwned")


def test_pending_client_csrs_wait_for_the_controller_managers_approver(config):
    assert review_csr(client(approved=False), config, approve_serving=True).decision is Decision.SKIP


@pytest.mark.parametrize("flags", [{"issued": True}, {"failed": True}, {"denied": True}])
def test_final_csrs_are_left_alone(config, flags):
    assert review_csr(client(**flags), config).decision is Decision.SKIP


def test_other_signers_are_not_ours(config):
    view = replace(client(), signer_name="kubernetes.io/kube-apiserver-client")
    assert review_csr(view, config).reason == "OtherSigner"


def test_status_certificate_holds_leaf_and_intermediates_not_the_root():
    def cert(subject, issuer, key, issuer_key, ca=True):
        builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(datetime(2026, 1, 1))
                   .not_valid_after(datetime(2027, 1, 1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        return builder.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    root = cert("root", "root", keys[0], keys[0])
    inter = cert("inter", "root", keys[1], keys[0])
    leaf = cert("leaf", "inter", keys[2], keys[1], ca=False)
    bundle = status_certificate(leaf, [inter, root])
    assert bundle.count(b"BEGIN CERTIFICATE") == 2 and bundle.startswith(leaf.strip().encode())
    assert status_certificate(leaf, [root]).count(b"BEGIN CERTIFICATE") == 1


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
