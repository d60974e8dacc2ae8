"""plan/adopt.py: a kubeadm-shaped tree made in memory, checked on its own and against the cluster file."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.helpers.kubeadm_cluster import cert_pem, issue, key_pem, new_ca, new_key
from vaultk8s.config import parse_config
from vaultk8s.errors import PlanRefused
from vaultk8s.plan import adopt

API_DNS = ("cp-1", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           "kubernetes.default.svc.cluster.local", "localhost")
API_IPS = ("10.96.0.1", "192.0.2.10", "127.0.0.1")


def make_tree() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    cas = {}
    for base, cn in (("ca", "kubernetes"), ("etcd/ca", "etcd-ca"), ("front-proxy-ca", "front-proxy-ca")):
        cas[base] = new_ca(cn, kind="ec")
        files[f"pki/{base}.crt"], files[f"pki/{base}.key"] = cert_pem(cas[base][0]), key_pem(cas[base][1])
    leaves = {"apiserver": ("ca", "kube-apiserver", API_DNS, API_IPS),
              "etcd/server": ("etcd/ca", "cp-1", ("cp-1", "localhost"), ("192.0.2.10", "127.0.0.1", "::1")),
              "front-proxy-client": ("front-proxy-ca", "front-proxy-client", (), ())}
    for base, (ca, cn, dns, ips) in leaves.items():
        cert, key = issue(*cas[ca], cn, dns=dns, ips=ips, server=True)
        files[f"pki/{base}.crt"], files[f"pki/{base}.key"] = cert_pem(cert), key_pem(key)
    sa = new_key("ec")
    files["pki/sa.key"] = key_pem(sa)
    files["pki/sa.pub"] = sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    admin, admin_key = issue(*cas["ca"], "kubernetes-admin", organization="system:masters", client=True)
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    files["admin.conf"] = yaml.safe_dump({
        "clusters": [{"name": "kube", "cluster": {"server": "https://127.0.0.1:6443",
                                                  "certificate-authority-data": b64(files["pki/ca.crt"])}}],
        "users": [{"name": "admin", "user": {"client-certificate-data": b64(cert_pem(admin)),
                                             "client-key-data": b64(key_pem(admin_key))}}],
    }).encode()
    return files


def cluster(**changes):
    doc = {"cluster": {"name": "kube", "endpoint": "https://127.0.0.1:6443", "service_cidr": "10.96.0.0/12",
                       "domain": "cluster.local"},
           "pki": {"key_type": "ec-p256", "leaf_ttl": "24h", "ca_ttl": "87600h"},
           "nodes": {"control_plane": [{"name": "cp-1", "ips": ["192.0.2.10"], "sans": ["127.0.0.1", "localhost"]}]}}
    doc["cluster"].update(changes)
    return parse_config(doc)


@pytest.fixture(scope="module")
def files():
    return make_tree()


def test_a_consistent_tree_reads_and_matches_its_cluster_file(files):
    tree, problems = adopt.read_tree(files)
    assert problems == [] and tree.node == "cp-1"
    assert adopt.check_cluster(cluster(), tree) == []
    assert "PRIVATE" not in repr(tree)  # the keys stay out of reprs


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.update({"pki/ca.key": f["pki/etcd/ca.key"]}), "pki/ca.key does not match pki/ca.crt"),
    (lambda f: f.pop("pki/sa.key"), "pki/sa.key missing"),
    (lambda f: f.update({"pki/sa.pub": f["pki/ca.crt"]}), "pki/sa.pub is not a PEM public key"),
    (lambda f: f.update({"pki/apiserver.crt": f["pki/front-proxy-client.crt"],
                         "pki/apiserver.key": f["pki/front-proxy-client.key"]}),
     "pki/apiserver.crt is not signed by pki/ca.crt"),
    (lambda f: f.update({"pki/front-proxy-client.key": f["pki/apiserver.key"]}),
     "pki/front-proxy-client.key does not match pki/front-proxy-client.crt"),
    (lambda f: f.update({"pki/etcd/ca.key": b"-----BEGIN PRIVATE KEY-----\nnot a key\n"}),
     "pki/etcd/ca.key is not an unencrypted PEM private key"),
])
def test_each_inconsistency_is_one_problem_naming_the_file(files, change, expected):
    bad = dict(files)
    change(bad)
    tree, problems = adopt.read_tree(bad)
    assert tree is None and expected in problems, problems
    assert not any("not a key" in p for p in problems)  # never the key's text


def test_a_removed_ca_key_is_no_problem_of_the_tree(files):
    """--remove-ca-keys ran: the tree still reads; only an import would need the key."""
    bad = dict(files)
    bad.pop("pki/ca.key")
    tree, problems = adopt.read_tree(bad)
    assert problems == [] and tree.cas["kubernetes-ca"].key_pem is None
    with pytest.raises(PlanRefused, match="pki/ca.key missing"):
        adopt.plan_cas(cluster(), tree, {n: adopt.ObservedMount(None) for n in tree.cas})


@pytest.mark.parametrize("changes, expected", [
    ({"endpoint": "https://10.0.0.10:6443"}, "differs from admin.conf's server https://127.0.0.1:6443"),
    ({"service_cidr": "10.100.0.0/16"}, "first IP 10.100.0.1 is not in pki/apiserver.crt"),
    ({"domain": "corp.local"}, "names kubernetes.default.svc.cluster.local, which the cluster file does not"),
])
def test_a_cluster_file_that_disagrees_is_named(files, changes, expected):
    tree, _ = adopt.read_tree(files)
    problems = adopt.check_cluster(cluster(**changes), tree)
    assert any(expected in p for p in problems), problems


def test_a_node_the_cluster_file_lacks_is_named(files):
    tree, _ = adopt.read_tree(files)
    assert adopt.check_cluster(cluster(), replace(tree, node="cp-9")) == [
        "node 'cp-9' (pki/etcd/server.crt's CN) is not a control-plane node in the cluster file"]


def test_plan_imports_into_empty_mounts_and_refuses_another_ca(files):
    tree, _ = adopt.read_tree(files)
    empty = {n: adopt.ObservedMount(None) for n in tree.cas}
    kinds = [a.kind for a in adopt.plan_cas(cluster(), tree, empty)]
    assert kinds == ["enable-mount", "import-ca"] * 3
    same = {n: adopt.ObservedMount("pki", cert_pem(c.cert).decode(), True, "adopted") for n, c in tree.cas.items()}
    assert adopt.plan_cas(cluster(), tree, same) == []
    unnamed = dict(same, **{"etcd-ca": replace(same["etcd-ca"], issuer_name="")})  # an interrupted adopt
    assert [(a.kind, a.target) for a in adopt.plan_cas(cluster(), tree, unnamed)] == [("import-ca", "etcd-ca")]
    other = dict(same, **{"etcd-ca": adopt.ObservedMount("pki", cert_pem(new_ca("etcd-ca")[0]).decode(), True)})
    with pytest.raises(PlanRefused, match="etcd-ca already holds another CA"):
        adopt.plan_cas(cluster(), tree, other)
    assert adopt.ca_keys_in_vault(tree, other) == ["etcd-ca"]


def test_derived_config_parses_and_describes_the_tree(files):
    tree, _ = adopt.read_tree(files)
    text = adopt.render_derived(*adopt.derive_config(tree, files))
    assert text.count(f"# {adopt.UNDERIVED}:") == 4  # the EC tree needs no key-type note
    config = parse_config(yaml.safe_load(text))
    assert adopt.check_cluster(config, tree) == []
    assert config.control_plane[0].sans == ("localhost",) and str(config.service_cidr) == "10.96.0.0/12"



def test_a_retired_kubeadm_ca_keeps_no_crl_usage():
    """kubeadm's CAs lack cRLSign: Vault refuses crl-signing for them, so retire must not ask for it."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from vaultk8s.plan.ca_rotation import RETIRED_USAGE, retired_usage

    with_crl, key = new_ca("kubernetes", kind="ec")  # keyCertSign + cRLSign
    assert retired_usage(with_crl) == RETIRED_USAGE
    cert_sign_only = x509.KeyUsage(True, False, True, False, False, True, False, False, False)  # kubeadm's
    now = datetime.now(timezone.utc)
    kubeadm_like = (x509.CertificateBuilder().subject_name(with_crl.subject).issuer_name(with_crl.subject)
                    .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                    .not_valid_after(now + timedelta(days=1)).add_extension(cert_sign_only, critical=True)
                    .sign(key, hashes.SHA256()))
    assert retired_usage(kubeadm_like) == "ocsp-signing,read-only"
