"""`vaultk8s bootstrap` against a real OpenBao: contents, trust, idempotency, dry run, role pinning."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import hvac
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from tests.helpers.cluster import cluster_doc, openssl_verify, run_cli, write_cluster
from vaultk8s import catalog, crypto
from vaultk8s.config import parse_config
from vaultk8s.plan.resolve import resolve_all

pytestmark = pytest.mark.integration

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


@pytest.fixture
def cluster(tmp_path, mount_prefix):
    doc = cluster_doc(mount_prefix)
    return write_cluster(tmp_path / "cluster.yaml", doc), doc


@pytest.fixture
def bootstrapped(cluster, tmp_path, vault_env):
    path, doc = cluster
    out = tmp_path / "out"
    proc = run_cli("bootstrap", "--config", str(path), "--out", str(out), "--output", "json", env=vault_env, check=True)
    return out, doc, json.loads(proc.stdout)


def _client(openbao) -> hvac.Client:
    return hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))


def _leaf_and_chain(path: Path) -> tuple[x509.Certificate, list[x509.Certificate]]:
    certs = x509.load_pem_x509_certificates(path.read_bytes())
    return certs[0], certs[1:]


def test_every_certificate_has_exactly_the_catalog_contents(bootstrapped):
    out, doc, _ = bootstrapped
    config = parse_config(doc)
    resolved = resolve_all(config)
    assert len(resolved) == 14 + 3 * 2
    for rc in resolved:
        cert, _ = _leaf_and_chain(out / rc.node / "pki" / rc.cert_file)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        orgs = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        assert cn == rc.common_name
        assert orgs == ([rc.organization] if rc.organization else [])
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        want = {SERVER} if rc.usages == {catalog.Usage.SERVER} else {CLIENT} if rc.usages == {catalog.Usage.CLIENT} else {SERVER, CLIENT}
        assert ekus == want, rc.spec.name
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns, ips = set(san.get_values_for_type(x509.DNSName)), set(san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            dns, ips = set(), set()
        assert dns == set(rc.dns_sans), rc.spec.name
        assert ips == set(rc.ip_sans), rc.spec.name
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
        basic = [e.value for e in cert.extensions if isinstance(e.value, x509.BasicConstraints)]
        assert not any(b.ca for b in basic)
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert 24 * 3600 <= lifetime.total_seconds() <= 24 * 3600 + 120


def test_kubeadm_facts_spelled_out(bootstrapped):
    """The table, written out by hand for the certificates operators ask about most."""
    out, _, _ = bootstrapped
    pki = out / "cp-1" / "pki"
    api, _ = _leaf_and_chain(pki / "apiserver.crt")
    san = api.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "cp-1", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local", "cp-1.demo.example"}
    assert set(map(str, san.get_values_for_type(x509.IPAddress))) == {"10.96.0.1", "10.0.0.11", "10.0.0.10"}
    admin, _ = _leaf_and_chain(pki / "admin.crt")
    assert admin.subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    kubelet, _ = _leaf_and_chain(out / "worker-2" / "pki" / "kubelet-client.crt")
    assert kubelet.subject.rfc4514_string() == "CN=system:node:worker-2,O=system:nodes"
    etcd, _ = _leaf_and_chain(pki / "etcd" / "peer.crt")
    san = etcd.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"cp-1", "localhost"}
    assert set(map(str, san.get_values_for_type(x509.IPAddress))) == {"10.0.0.11", "127.0.0.1", "::1"}


def test_every_leaf_verifies_against_its_own_ca_only(bootstrapped):
    out, doc, _ = bootstrapped
    config = parse_config(doc)
    now = datetime.now(timezone.utc)
    for rc in resolve_all(config):
        pki = out / rc.node / "pki"
        own_ca = pki / catalog.ca(rc.spec.ca).cert_file
        proc = openssl_verify(own_ca, pki / rc.cert_file)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for other in catalog.cas_for(config.node(rc.node).control_plane):
            if other.name != rc.spec.ca:
                assert openssl_verify(pki / other.cert_file, pki / rc.cert_file).returncode != 0
        leaf, chain = _leaf_and_chain(pki / rc.cert_file)
        store = Store(x509.load_pem_x509_certificates(own_ca.read_bytes()))
        builder = PolicyBuilder().store(store).time(now)
        if catalog.Usage.SERVER in rc.usages:
            builder.build_server_verifier(x509.DNSName(rc.dns_sans[0])).verify(leaf, chain)
        else:
            # Web-PKI defaults demand a SAN on every leaf; Kubernetes client identities have none.
            ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
                x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
            builder = builder.extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
            builder.build_client_verifier().verify(leaf, chain)


def test_three_distinct_cas_and_no_ca_key_on_disk(bootstrapped):
    out, _, report = bootstrapped
    assert len(set(report["ca_fingerprints"].values())) == 3
    pki = out / "cp-1" / "pki"
    cas = [crypto.load_cert((pki / c.cert_file).read_bytes()) for c in catalog.CAS]
    assert len({c.subject.rfc4514_string() for c in cas}) == 3
    for name in catalog.CA_KEY_FILES:
        assert not (pki / name).exists()
    ca_keys = {c.public_key().public_bytes(*_spki()) for c in cas}
    for key_file in out.rglob("*.key"):
        key = crypto.load_key(key_file.read_bytes())
        assert key.public_key().public_bytes(*_spki()) not in ca_keys, key_file


def _spki():
    from cryptography.hazmat.primitives import serialization
    return serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo


def test_layout_and_permissions(bootstrapped):
    out, _, _ = bootstrapped
    expected_cp = {"ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"} | {
        f for spec in catalog.CERTS for f in (spec.cert_file, spec.key_file)} | {catalog.SA_KEY_FILE, catalog.SA_PUB_FILE}
    assert _files(out / "cp-1" / "pki") == expected_cp
    expected_worker = {"ca.crt"} | {f for spec in catalog.certs_for(False) for f in (spec.cert_file, spec.key_file)}
    assert _files(out / "worker-1" / "pki") == expected_worker
    for path in (out / "cp-1" / "pki" / "..data").rglob("*"):
        mode = stat.S_IMODE(os.stat(path).st_mode)
        if path.name.endswith(".key"):
            assert mode == 0o600, path
        elif path.is_dir():
            assert mode == 0o700, path
    assert stat.S_IMODE((out / "cp-1").stat().st_mode) == 0o700
    assert "system:kubelet-api-admin" in (out / "rbac.yaml").read_text()


def _files(pki: Path) -> set[str]:
    """What a reader sees through the symlinks (the versioned ..data directories left out)."""
    found = set()
    for root, dirs, files in os.walk(pki, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith("..")]
        found |= {(Path(root) / f).relative_to(pki).as_posix() for f in files if not f.startswith("..")}
    return found


def test_second_run_is_a_no_op(bootstrapped, cluster, vault_env, openbao, mount_prefix):
    out, _, first = bootstrapped
    path, _ = cluster
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    data_link = os.readlink(out / "cp-1" / "pki" / "..data")
    proc = run_cli("bootstrap", "--config", str(path), "--out", str(out), "--output", "json", env=vault_env, check=True)
    second = json.loads(proc.stdout)
    assert second["changed"] is False and second["actions"] == []
    assert second["ca_fingerprints"] == first["ca_fingerprints"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert os.readlink(out / "cp-1" / "pki" / "..data") == data_link
    issuers = _client(openbao).list(f"{mount_prefix}kubernetes-ca/issuers")["data"]["keys"]
    assert len(issuers) == 1
    tidy = _client(openbao).read(f"{mount_prefix}etcd-ca/config/auto-tidy")["data"]
    assert tidy["enabled"] and tidy["tidy_cert_store"] and tidy["safety_buffer"] == 3 * 86400


def test_force_renew_reissues_leaves_but_keeps_cas(bootstrapped, cluster, vault_env):
    out, _, first = bootstrapped
    path, _ = cluster
    old = crypto.load_cert((out / "cp-1" / "pki" / "apiserver.crt").read_bytes())
    proc = run_cli("bootstrap", "--config", str(path), "--out", str(out), "--force-renew", "--output", "json",
                   env=vault_env, check=True)
    report = json.loads(proc.stdout)
    assert {a["kind"] for a in report["actions"]} == {"issue", "write-file"}
    # Only the kubeconfigs that embed a re-issued cert follow it; the rest reference files.
    assert {(a["target"].split("/")[-1], a["reason"]) for a in report["actions"] if a["kind"] == "write-file"} == {
        ("admin.conf", "client certificate re-issued"), ("super-admin.conf", "client certificate re-issued")}
    assert report["ca_fingerprints"] == first["ca_fingerprints"]
    new = crypto.load_cert((out / "cp-1" / "pki" / "apiserver.crt").read_bytes())
    assert new.serial_number != old.serial_number


def test_catalog_change_reissues_only_what_changed(bootstrapped, cluster, vault_env, tmp_path):
    out, doc, _ = bootstrapped
    doc["nodes"]["workers"][0]["ips"] = ["10.0.1.99"]
    path = write_cluster(tmp_path / "changed.yaml", doc)
    proc = run_cli("bootstrap", "--config", str(path), "--out", str(out), "--output", "json", env=vault_env, check=True)
    actions = json.loads(proc.stdout)["actions"]
    issued = {a["target"] for a in actions if a["kind"] == "issue"}
    assert issued == {"worker-1/pki/kubelet.crt"}
    assert {a["target"].split("/roles/")[1] for a in actions if a["kind"] == "write-role"} == {"kubelet-serving-worker-1"}


def test_renewal_window_is_the_last_third(bootstrapped, cluster, openbao, monkeypatch):
    from datetime import timedelta

    from vaultk8s.config import load_config
    from vaultk8s.ops.bootstrap import bootstrap
    from vaultk8s.vault.gateway import VaultGateway

    out, _, _ = bootstrapped
    path, _ = cluster
    config = load_config(path)
    gateway = VaultGateway.from_env(openbao.as_environ())
    now = datetime.now(timezone.utc)
    early = bootstrap(config, out, gateway, now=now + timedelta(hours=15), dry_run=True)
    assert early.actions == []
    late = bootstrap(config, out, gateway, now=now + timedelta(hours=16, minutes=5), dry_run=True)
    assert {a.reason for a in late.actions} == {"in renewal window"}
    assert len(late.actions) == 20


def test_dry_run_touches_nothing(cluster, tmp_path, vault_env, openbao, mount_prefix):
    path, _ = cluster
    out = tmp_path / "never"
    proc = run_cli("bootstrap", "--config", str(path), "--out", str(out), "--dry-run", env=vault_env, check=True)
    assert "would: enable-mount" in proc.stdout and "would: issue" in proc.stdout
    assert not out.exists()
    mounts = _client(openbao).sys.list_mounted_secrets_engines()["data"]
    assert not any(m.startswith(mount_prefix) for m in mounts)


def test_roles_pin_identity(bootstrapped, openbao, mount_prefix):
    """Vault itself refuses what a role does not allow, and sets O whatever the CSR says."""
    client = _client(openbao)
    mount = f"{mount_prefix}kubernetes-ca"
    key = crypto.generate_key("ec-p256")

    def sign(role: str, cn: str, org: str | None = None, dns=(), ips=()):
        csr = crypto.build_csr(key, cn, org, tuple(dns), tuple(ipaddress.ip_address(i) for i in ips))
        return client.write_data(f"{mount}/sign/{role}", data={"csr": csr, "exclude_cn_from_sans": True})

    forged = sign("admin", "kubernetes-admin", "system:masters")["data"]["certificate"]
    assert crypto.load_cert(forged).subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    refused = [
        ("kubelet-client-worker-1", "system:node:worker-2", None, (), ()),
        ("kubelet-client-worker-1", "system:node:worker-1", None, ("worker-2",), ()),
        ("kubelet-serving-worker-1", "system:node:worker-1", None, ("worker-1",), ("10.0.1.2",)),
        ("admin", "kubernetes-super-admin", None, (), ()),
        ("apiserver-cp-1", "kube-apiserver", None, ("evil.example",), ()),
        ("apiserver-cp-1", "kube-apiserver", None, ("*.cluster.local",), ()),
        ("kube-proxy", "system:kube-proxy", None, ("localhost",), ()),
    ]
    for role, cn, org, dns, ips in refused:
        with pytest.raises(hvac.exceptions.InvalidRequest):
            sign(role, cn, org, dns, ips)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.write_data(f"{mount}/sign/kube-proxy", data={"csr": crypto.build_csr(crypto.generate_key("rsa-2048"), "system:kube-proxy", None, (), ())})
    role = client.read(f"{mount}/roles/kubelet-client-worker-1")["data"]
    assert role["allow_any_name"] is False and "disabled" not in role["cn_validations"]
    assert role["allowed_domains"] == ["system:node:worker-1"] and role["organization"] == ["system:nodes"]


def test_removed_node_loses_its_roles(bootstrapped, cluster, vault_env, openbao, mount_prefix, tmp_path):
    out, doc, _ = bootstrapped
    doc["nodes"]["workers"] = doc["nodes"]["workers"][:1]
    path = write_cluster(tmp_path / "smaller.yaml", doc)
    run_cli("bootstrap", "--config", str(path), "--out", str(out), env=vault_env, check=True)
    roles = _client(openbao).list(f"{mount_prefix}kubernetes-ca/roles")["data"]["keys"]
    assert "kubelet-client-worker-2" not in roles and "kubelet-client-worker-1" in roles


def test_certs_check_reports_and_flags_problems(bootstrapped):
    out, _, _ = bootstrapped
    ok = run_cli("certs", "check", "--out", str(out))
    assert ok.returncode == 0, ok.stderr
    assert "apiserver.crt" in ok.stdout and "kubernetes-ca" in ok.stdout
    rows = json.loads(run_cli("certs", "check", "--out", str(out), "--output", "json", check=True).stdout)
    assert rows["problems"] == 0 and len(rows["certificates"]) == 14 + 3 + 2 * 4
    # Swap a key for another node's: a mismatched pair must be reported.
    pki = out / "worker-1" / "pki"
    other = (out / "worker-2" / "pki" / "kubelet.key").read_bytes()
    from vaultk8s.store.atomic import secret
    from vaultk8s.store.layout import NodeOutput
    NodeOutput(out, "worker-1").update_pki({"kubelet.key": secret(other)})
    bad = run_cli("certs", "check", "--out", str(out), "--output", "json")
    assert bad.returncode == 1
    problems = [r for r in json.loads(bad.stdout)["certificates"] if r["problems"]]
    assert [(r["node"], r["file"], r["problems"]) for r in problems] == [
        ("worker-1", "kubelet.crt", ["key does not match certificate"])]
    assert (pki / "kubelet.key").read_bytes() == other


def test_rsa_leaves_made_in_key_processes_match_their_certs(openbao, mount_prefix, tmp_path):
    """RSA keys and CSRs come from bootstrap's key processes (17 RSA leaves): each key still pairs
    with its certificate, each certificate verifies against its own CA, and a re-run is a no-op."""
    from vaultk8s.ops.bootstrap import bootstrap
    from vaultk8s.vault.gateway import VaultGateway

    config = parse_config(cluster_doc(mount_prefix, workers=1, key_type="rsa-2048"))
    gateway = VaultGateway.from_env(openbao.as_environ())
    out = tmp_path / "out"
    first = bootstrap(config, out, gateway, now=datetime.now(timezone.utc))
    assert sum(a.kind == "issue" for a in first.actions) == 14 + 3
    for rc in resolve_all(config):
        pki = out / rc.node / "pki"
        cert, _ = _leaf_and_chain(pki / rc.cert_file)
        key = crypto.load_key((pki / rc.key_file).read_bytes())
        assert crypto.key_type_of(cert.public_key()) == "rsa-2048" and crypto.key_matches(cert, key)
        proc = openssl_verify(pki / catalog.ca(rc.spec.ca).cert_file, pki / rc.cert_file)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    second = bootstrap(config, out, gateway, now=datetime.now(timezone.utc))
    assert second.actions == [] and second.kept == 14 + 3


def test_leaf_checks_in_the_check_process_give_the_reasons_made_inline(openbao, mount_prefix, tmp_path, monkeypatch):
    """A re-run checks leaves in a second process from _MIN_CERTS_FOR_CHECK_PROCESS certificates on
    (forced here on a small cluster): missing files, a key of another cert, a cert of another CA,
    and a forced renewal get the same reasons, in the same order, as when checked in this process."""
    from concurrent.futures import ProcessPoolExecutor

    from vaultk8s.ops import bootstrap as bootstrap_ops
    from vaultk8s.store.atomic import public, secret
    from vaultk8s.store.layout import NodeOutput
    from vaultk8s.vault.gateway import VaultGateway

    submitted = []

    class Recording(ProcessPoolExecutor):
        def submit(self, fn, /, *args, **kwargs):
            submitted.append(fn.__name__)
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(bootstrap_ops, "ProcessPoolExecutor", Recording)
    config = parse_config(cluster_doc(mount_prefix, workers=2))
    gateway = VaultGateway.from_env(openbao.as_environ())
    out = tmp_path / "out"
    bootstrap_ops.bootstrap(config, out, gateway, now=datetime.now(timezone.utc))
    worker_2, control_plane = out / "worker-2" / "pki", out / "cp-1" / "pki"
    NodeOutput(out, "worker-1").update_pki({"kubelet.key": secret((worker_2 / "kubelet.key").read_bytes())})
    NodeOutput(out, "worker-2").update_pki({"kubelet.crt": None})
    NodeOutput(out, "cp-1").update_pki({"apiserver.crt": public((control_plane / "etcd" / "server.crt").read_bytes()),
                                        "apiserver.key": secret((control_plane / "etcd" / "server.key").read_bytes())})

    def plan(threshold: float, force: bool = False) -> list:
        monkeypatch.setattr(bootstrap_ops, "_MIN_CERTS_FOR_CHECK_PROCESS", threshold)
        report = bootstrap_ops.bootstrap(config, out, gateway, now=datetime.now(timezone.utc), dry_run=True,
                                         force_renew=force)
        return [a for a in report.actions if a.kind == "issue"]

    inline = plan(float("inf"))
    assert submitted == []
    in_process = plan(0)
    assert submitted == ["reissue_reasons"]
    assert in_process == inline
    assert {(a.target, a.reason) for a in inline} == {
        ("worker-1/pki/kubelet.crt", "key does not match certificate"),
        ("worker-2/pki/kubelet.crt", "missing"),
        ("cp-1/pki/apiserver.crt", "not issued by the current CA")}
    assert plan(0, force=True) == plan(float("inf"), force=True)
    assert len(plan(0, force=True)) == len(resolve_all(config))
