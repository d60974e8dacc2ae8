"""Smoke test of tests/helpers/kubelet.py: the real kubelet (v1.24) TLS-bootstraps with a bootstrap
token against a real kube-apiserver + kube-controller-manager (`--controllers=*,-csrsigning`: nothing
else signs), and `vaultk8s signer --approve-serving` signs its client and serving certificates
through a real OpenBao.

Every leaf is 10 minutes (`pki.leaf_ttl: 10m`), so a client rotation is due 7-9 minutes after the
kubelet's first certificate. That wait is opt-in: VAULTK8S_SLOW_TESTS=1 (see test_client_rotation).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vaultk8s.config import load_config

from tests.helpers.agent import start_agent, stop_agent, wait_for
from tests.helpers.cluster import run_cli
from tests.helpers.kube import running_control_plane
from tests.helpers.csr import SignerProcess
from tests.helpers.kube import KubeControlPlane
from tests.helpers.kubelet import (KubeletNode, apply_bootstrap_rbac, bootstrap_kubeconfig, kubelet_prereqs,
                                   normalise_serial, start_signer, vault_serial)
from tests.helpers.policy import call
from tests.helpers.redacted import RedactedEnv, Secret

pytestmark = pytest.mark.integration

NODE, NODE_IP = "worker-1", "127.0.1.1"  # the cluster file's worker-1 (tests/helpers/kube.py): it owns that IP
SLOW = os.environ.get("VAULTK8S_SLOW_TESTS") == "1"


class Clock:
    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()

    def lap(self, what: str) -> None:
        now = time.monotonic()
        print(f"[timing] {what}: +{now - self.last:.1f}s (total {now - self.t0:.1f}s)")
        self.last = now


@dataclass
class Kit:
    plane: KubeControlPlane
    node: KubeletNode
    signer: SignerProcess
    env: RedactedEnv  # prints as keys only: pytest shows fixture values in failure output
    clock: Clock

    def assert_issued_by_kubernetes_ca(self, cert: x509.Certificate) -> None:
        """Signed by the cluster's kubernetes-ca, and in that Vault mount's own list of issued certificates."""
        ca = x509.load_pem_x509_certificates((self.plane.pki / "ca.crt").read_bytes())[0]
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)
        mount = load_config(self.plane.cluster_file).mount("kubernetes-ca")
        listed = call(self.env, Secret(self.env["VAULT_TOKEN"]), "LIST", f"{mount}/certs").json()["data"]["keys"]
        assert vault_serial(cert) in {normalise_serial(s) for s in listed}, f"{vault_serial(cert)} not in {mount}/certs"


@pytest.fixture
def kubelet_cluster(request, tmp_path):
    """Control plane (10m leaves) + KCM without csrsigning + the signer + one kubelet started."""
    kubelet_prereqs()  # skip before any work, OpenBao included
    clock = Clock()
    env = RedactedEnv(request.getfixturevalue("openbao").as_environ())
    with running_control_plane(tmp_path, env, f"k{secrets.token_hex(4)}/", workers=1, leaf_ttl="10m") as plane:
        clock.lap("control plane up (bootstrap, etcd, kube-apiserver)")
        plane.start_controller_manager()  # --controllers=*,-csrsigning
        apply_bootstrap_rbac(plane)
        signer = start_signer(plane, env, tmp_path)
        node = KubeletNode(tmp_path / "kubelet", plane, NODE, NODE_IP)
        try:
            clock.lap("KCM + signer started")
            node.start(bootstrap_kubeconfig(plane, tmp_path / "bootstrap-kubelet.conf"))
            clock.lap("containerd + kubelet running")
            yield Kit(plane, node, signer, env, clock)
            assert signer.proc.poll() is None, signer.text()[-2000:]
        finally:
            node.cleanup()
            signer.stop()


def _approval(csr: dict) -> str | None:
    return next((c["reason"] for c in (csr.get("status") or {}).get("conditions") or [] if c["type"] == "Approved"),
                None)


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_kubelet_bootstraps_and_gets_serving_certificate_through_vault(kubelet_cluster):
    kit = kubelet_cluster
    node, signer, clock = kit.node, kit.signer, kit.clock

    client = node.wait_client_cert(timeout=60)
    clock.lap("client certificate signed (bootstrap token CSR, KCM approval, Vault)")
    assert _cn(client) == f"system:node:{NODE}"
    assert [o.value for o in client.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:nodes"]
    assert client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    kit.assert_issued_by_kubernetes_ca(client)
    assert (client.not_valid_after_utc - client.not_valid_before_utc).total_seconds() <= 10 * 60 + 60

    [bootstrap] = node.csrs()
    assert bootstrap["spec"]["username"].startswith("system:bootstrap:")  # the bootstrap token's identity
    assert bootstrap["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    assert _approval(bootstrap) == "AutoApproved"  # kube-controller-manager's approver, not the signer

    node.wait_registered(timeout=60)
    clock.lap("Node registered")

    node.patch_addresses()
    serving = node.wait_serving_cert(timeout=60)
    clock.lap("serving certificate signed after patch_addresses")
    assert _cn(serving) == f"system:node:{NODE}"
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [NODE]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == [NODE_IP]
    kit.assert_issued_by_kubernetes_ca(serving)
    serving_csr = node.csrs()[-1]
    assert (serving_csr["spec"]["username"], serving_csr["spec"]["signerName"]) == \
        (f"system:node:{NODE}", "kubernetes.io/kubelet-serving")
    assert _approval(serving_csr) == "VaultK8sApproved"  # --approve-serving
    assert f"signed CSR {serving_csr['metadata']['name']} " in signer.text()
    assert node.running(), node.log_tail()


@pytest.mark.timeout(1200)
@pytest.mark.skipif(not SLOW, reason="waits 7-9 min for the kubelet's client rotation with 10m leaves "
                                      "(7m57s-8m10s in all, measured); set VAULTK8S_SLOW_TESTS=1 to run it")
def test_client_rotation(kubelet_cluster, tmp_path):
    """The kubelet rotates its client certificate at 70-90% of its life; the new CSR comes from
    system:node:<n>, KCM approves it, Vault signs it. The control plane's own 10m leaves are kept
    fresh meanwhile by the agent of cp-1, as operators run it."""
    kit = kubelet_cluster
    plane, node, env, clock = kit.plane, kit.node, kit.env, kit.clock
    creds = tmp_path / "creds-cp-1"
    run_cli("node", "credentials", "--config", str(plane.cluster_file), "--node", "cp-1", "--out", str(creds),
            env=env, check=True)
    agent = start_agent(RedactedEnv({k: v for k, v in env.items() if k != "VAULT_TOKEN"}), "-c", str(plane.cluster_file),
                        "--node", "cp-1", "--out", str(plane.out), "--credentials", str(creds),
                        log=tmp_path / "agent-cp-1.log")
    try:
        first = node.wait_client_cert(timeout=60)
        clock.lap("first client certificate")
        life = (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
        second = node.wait_client_cert(timeout=life * 0.9 + 60, other_than=first.serial_number)
        clock.lap("rotated client certificate")
        assert _cn(second) == f"system:node:{NODE}"
        kit.assert_issued_by_kubernetes_ca(second)
        renewal = node.csrs()[-1]  # from the node's own client certificate, approved by KCM
        assert (renewal["spec"]["username"], _approval(renewal)) == (f"system:node:{NODE}", "AutoApproved")
        # The kubelet drops its connections to use the new certificate (its own log says so), and
        # keeps talking to the API server on new ones: its Lease is renewed after that.
        detected = "Certificate rotation detected, shutting down client connections"
        wait_for("the kubelet to switch certificates", lambda: node.log_tail(10**7).count(detected) >= 2, timeout=60)
        switched_at = datetime.now(timezone.utc)
        clock.lap("kubelet switched to the rotated certificate")
        wait_for("a Lease renewal after the switch",
                 lambda: (node.lease_renew_time() or switched_at) > switched_at, timeout=60)
        clock.lap("Lease renewed after the switch")
        assert agent.poll() is None, (tmp_path / "agent-cp-1.log").read_text()[-2000:]
    finally:
        stop_agent(agent)
