"""Test helpers: cluster files, the CLI as a subprocess, and certificate checks with real verifiers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

from vaultk8s import catalog

REPO = Path(__file__).resolve().parents[2]


def cluster_doc(prefix: str, workers: int = 2, control_planes: int = 1, key_type: str = "ec-p256",
                leaf_ttl: str = "24h") -> dict[str, Any]:
    return {
        "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443", "service_cidr": "10.96.0.0/12",
                    "domain": "cluster.local"},
        "pki": {"key_type": key_type, "leaf_ttl": leaf_ttl, "ca_ttl": "87600h"},
        "vault": {"mount_prefix": prefix},
        "nodes": {
            "control_plane": [{"name": f"cp-{i + 1}", "ips": [f"10.0.0.{11 + i}"], "sans": [f"cp-{i + 1}.demo.example"]}
                              for i in range(control_planes)],
            "workers": [{"name": f"worker-{i + 1}", "ips": [f"10.0.{1 + i // 250}.{1 + i % 250}"]} for i in range(workers)],
        },
    }


def write_cluster(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 300):
    """Run `python -m vaultk8s` as an operator would; env replaces VAULT_*/BAO_* of this process."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "vaultk8s", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"vaultk8s {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def openssl_verify(ca_file: Path, cert_file: Path) -> subprocess.CompletedProcess:
    """openssl verify with the leaf file's own chain (leaf + intermediates) as untrusted certs."""
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), "-untrusted", str(cert_file),
                           str(cert_file)], capture_output=True, text=True, timeout=30)


def policy_verify(spec: catalog.CertSpec, server_name: str, anchors: list[x509.Certificate],
                  chain: list[x509.Certificate]) -> list[x509.Certificate]:
    """cryptography's verifier: chain[0] is the leaf, chain[1:] the intermediates it presents.

    Returns the verified chain, leaf first and trust anchor last; raises if it does not verify.
    """
    builder = PolicyBuilder().store(Store(anchors))
    if catalog.Usage.SERVER in spec.usages:
        return builder.build_server_verifier(x509.DNSName(server_name)).verify(chain[0], chain[1:])
    # Our client certs, like kubeadm's, carry no SAN; the web PKI profile requires one, so the
    # end-entity policy relaxes only that. CA certificates keep the strict web PKI profile.
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    builder = builder.extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)
    return builder.build_client_verifier().verify(chain[0], chain[1:]).chain
