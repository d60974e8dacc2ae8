"""The adoption harness itself (issue 18): a tree made by the real kubeadm v1.24's own phases, etcd +
kube-apiserver (+ kube-controller-manager with csrsigning) on it with kubeadm's flags, and request
loops through kubeadm's admin.conf and a ServiceAccount token that count every failure."""

from __future__ import annotations

import os
import time

import pytest

from tests.helpers.kubeadm_cluster import (ADVERTISE_ADDRESS, CA_FILES, KubeadmControlPlane, KubectlProbe,
                                           RequestLoop, cert_summary, kubeadm_cluster, kubeadm_manifest_commands,
                                           load_pair, make_kubeadm_tree, mint_token, request_loops, standard_loops)
from tests.helpers.kube import kube_bin_dir, loopback_port

pytestmark = pytest.mark.integration


def _flags(command: list[str]) -> dict[str, str]:
    return dict(arg.removeprefix("--").partition("=")[::2] for arg in command[1:])


def test_kubeadm_tree_is_kubeadms_standard_layout(tmp_path):
    kube_bin_dir()
    before = os.path.exists("/etc/kubernetes")
    tree = make_kubeadm_tree(tmp_path, 6443)
    assert tree == tmp_path / "cp-1"
    assert os.path.exists("/etc/kubernetes") == before  # no root side effect, no namespace needed
    assert not (tree / "super-admin.conf").exists()  # kubeadm 1.24 writes none
    for base in CA_FILES:
        cert, _ = load_pair(tree / "pki", base)
        facts = cert_summary(cert)
        assert facts["key"] == "rsa-2048" and facts["days"] >= 3649, facts
    apiserver = cert_summary(load_pair(tree / "pki", "apiserver")[0])
    assert {"127.0.0.1", ADVERTISE_ADDRESS, "10.96.0.1"} <= set(apiserver["ips"])
    assert {"cp-1", "localhost", "kubernetes.default.svc.cluster.local"} <= set(apiserver["dns"])
    for key in ("pki/ca.key", "pki/sa.key", "pki/sa.pub", "admin.conf"):
        assert (tree / key).stat().st_mode & 0o777 == 0o600, key  # kubeadm writes sa.pub 0600 too


def test_harness_flags_are_kubeadms_static_pod_flags(tmp_path):
    """The commands the harness runs carry every flag of kubeadm's own manifests, with the same
    values except the addresses, ports, data dir and kubeconfig copy the harness must change."""
    kube_bin_dir()
    if os.geteuid() != 0:
        pytest.skip("kubeadm writes manifests to /etc/kubernetes/manifests only: the private mount namespace needs root")
    port = loopback_port()
    tree = make_kubeadm_tree(tmp_path, port)
    manifests = kubeadm_manifest_commands(tree, tmp_path)
    plane = KubeadmControlPlane(tree, tmp_path / "run", port)
    ours = _flags(plane.apiserver_args())
    theirs = _flags(manifests["kube-apiserver"])
    rewritten = {"advertise-address", "etcd-servers"}
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    assert {k: v for k, v in theirs.items() if k not in rewritten} == {k: ours[k] for k in theirs if k not in rewritten}
    assert set(ours) - set(theirs) == {"bind-address", "cert-dir"}
    assert theirs["advertise-address"] == ADVERTISE_ADDRESS and ours["advertise-address"] == "127.0.0.1"

    etcd = _flags(manifests["etcd"])
    for flag in ("cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-key-file",
                 "peer-trusted-ca-file", "client-cert-auth", "peer-client-cert-auth", "name"):
        assert flag in etcd  # the TLS flags KubeControlPlane.start_etcd passes, same files
    assert etcd["cert-file"] == str(tree / "pki/etcd/server.crt")

    kcm = _flags(manifests["kube-controller-manager"])
    assert kcm["cluster-signing-key-file"] == str(tree / "pki/ca.key")
    assert kcm["controllers"] == "*,bootstrapsigner,tokencleaner"
    assert kcm["kubeconfig"] == "/etc/kubernetes/controller-manager.conf"  # read inside the pod: the tree's


def test_kubeadm_cluster_runs_and_both_loops_see_no_failure(tmp_path):
    """etcd + kube-apiserver on kubeadm's tree; admin.conf (HTTPS and kubectl) and a ServiceAccount
    token minted with kubeadm's sa.key each answer every ~200 ms for 10 s without one failure."""
    with kubeadm_cluster(tmp_path) as plane:
        missing = plane.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        assert missing.returncode != 0  # no controller-manager: no `default` ServiceAccount
        token = mint_token(plane)
        admin, sa = standard_loops(plane, token)
        kubectl = RequestLoop("kubectl admin.conf", KubectlProbe(plane.admin_kubeconfig, home=plane.workdir), 0.2)
        with request_loops(admin, sa, kubectl):
            time.sleep(10)
        for loop in (admin, sa, kubectl):
            summary = loop.summary()
            assert summary.requests >= 30 and summary.failed == 0, str(summary)
        assert len(admin.summary().changes) == 1  # one serving certificate throughout
        # admin.conf in 1.24 is O=system:masters: it can do anything, with no RBAC binding applied.
        assert plane.kubectl("auth", "can-i", "delete", "secrets", "-A").stdout.strip() == "yes"


def test_controller_manager_with_csrsigning_signs_a_csr(tmp_path):
    """kubeadm's controller-manager (csrsigning from pki/ca.key) signs an approved CSR."""
    from tests.helpers.kubeadm_cluster import new_key
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID
    import base64

    with kubeadm_cluster(tmp_path, controller_manager=True) as plane:
        key = new_key()
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "probe-user")]))
               .sign(key, hashes.SHA256()))
        pem = base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()
        plane.kubectl("apply", "-f", "-", input=(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {name: probe}\n"
            f"spec: {{request: {pem}, signerName: kubernetes.io/kube-apiserver-client, usages: [client auth]}}\n"))
        plane.kubectl("certificate", "approve", "probe")
        deadline, issued = time.monotonic() + 60, ""
        while time.monotonic() < deadline and not issued:
            issued = plane.kubectl("get", "csr", "probe", "-o", "jsonpath={.status.certificate}").stdout.strip()
            time.sleep(0.5)
        assert issued, plane._tail("kube-controller-manager-0")
        cert = x509.load_pem_x509_certificate(base64.b64decode(issued))
        assert cert.issuer.rfc4514_string() == "CN=kubernetes"
