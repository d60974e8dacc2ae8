"""A real kubelet joined to a kubeadm cluster before adoption keeps rotating its certificates after
it (issue 18): its own file, as it waits out a client certificate's 2-minute life (~3 min)."""

from __future__ import annotations

import time

import pytest

from tests.helpers.adopt import CA_KEYS, adopt_in_place, derived_cluster
from tests.helpers.kubeadm_cluster import kubeadm_cluster

pytestmark = pytest.mark.integration


WORKER, WORKER_IP = "worker-1", "127.0.1.1"
VAULT_LIFE_S = 3600  # Vault signs for the role's 24h; the controller-manager here for 2m (+5m backdated)


def _vault_signed_rotation(node, first, timeout: float):
    """The kubelet's first client certificate after `first` that Vault signed. On a slow machine the
    rotation can fall before adoption is through: the controller-manager still signs that one (7m
    life) and the kubelet rotates it again ~70 s later, through the signer."""
    deadline, current = time.monotonic() + timeout, first
    while True:
        current = node.wait_client_cert(timeout=max(1.0, deadline - time.monotonic()), other_than=current.serial_number)
        if (current.not_valid_after_utc - current.not_valid_before_utc).total_seconds() > VAULT_LIFE_S:
            return current
        print(f"client rotation {current.serial_number:x} signed by the controller-manager before it stopped")


def test_kubelet_joined_before_adoption_rotates_through_vaultk8s_signer(vault_env, mount_prefix, tmp_path):
    """A real kubelet TLS-bootstraps against kubeadm's controller-manager (csrsigning with ca.key, 2m
    certificates so its client rotation is due 84-108 s later). Then the runbook: adopt, bootstrap
    in place, `vaultk8s signer` started, the controller-manager restarted without csrsigning, the
    CA keys removed. The kubelet's next client CSR and its serving CSR are signed through Vault,
    and it stays registered."""
    from tests.helpers.kubelet import KubeletNode, apply_bootstrap_rbac, bootstrap_kubeconfig, start_signer

    with kubeadm_cluster(tmp_path) as plane:
        kcm = plane.start_controller_manager(["--cluster-signing-duration=2m"])
        apply_bootstrap_rbac(plane)
        node = KubeletNode(tmp_path / "kubelet", plane, WORKER, WORKER_IP)
        signer = None
        try:
            node.start(bootstrap_kubeconfig(plane, tmp_path / "bootstrap-kubelet.conf"))
            first = node.wait_client_cert(timeout=60)
            started = time.monotonic()
            assert first.issuer.rfc4514_string() == "CN=kubernetes"  # kubeadm's CA, signed by the controller-manager
            node.wait_registered(timeout=60)

            cluster = derived_cluster(plane.node_dir, tmp_path / "cluster.yaml", mount_prefix,
                                      workers=[{"name": WORKER, "ips": [WORKER_IP]}])
            plane.cluster_file = cluster
            adopt_in_place(plane, cluster, vault_env)
            plane.stop_controller_manager(kcm)  # docs/adopt.md step 4: csrsigning off, then the signer
            plane.start_controller_manager(csrsigning=False)
            signer = start_signer(plane, vault_env, tmp_path)
            assert [k for k in CA_KEYS if (plane.node_dir / k).exists()] == []

            life = (first.not_valid_after_utc - first.not_valid_before_utc).total_seconds()
            try:
                second = _vault_signed_rotation(node, first, timeout=life + 60)
            except AssertionError as err:
                states = [(c["metadata"]["name"], c["spec"]["username"], (c.get("status") or {}).get("conditions"),
                           bool((c.get("status") or {}).get("certificate"))) for c in node.csrs()]
                raise AssertionError(f"{err}\nCSRs: {states}\nsigner: {signer.text()[-3000:]}") from None
            rotated = time.monotonic() - started
            node.patch_addresses()
            serving = node.wait_serving_cert(timeout=60)
            renewal = node.csrs()[-2]
            assert renewal["spec"]["username"] == f"system:node:{WORKER}"
            for cert in (second, serving):  # signed by the signer: csrsigning is off, the CA key gone
                assert cert.issuer.rfc4514_string() == "CN=kubernetes"
                assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() > VAULT_LIFE_S
            assert node.wait_registered(timeout=30)
            assert signer.proc.poll() is None, signer.text()[-2000:]
            print(f"client rotation through the signer {rotated:.0f}s after the first certificate")
        finally:
            node.cleanup()
            if signer is not None:
                signer.stop()
