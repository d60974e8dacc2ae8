"""Leaf certificates shared by bootstrap and the agent: the CA as leaves see it, what is on disk,
issuing one leaf from a CSR, and the file changes that put leaves and CA bundles in a node's pki/."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from cryptography import x509

from vaultk8s import catalog, crypto
from vaultk8s.errors import VaultError
from vaultk8s.plan.leaves import ObservedLeaf, reissue_reason
from vaultk8s.plan.resolve import ResolvedCert
from vaultk8s.store.atomic import FileContent, public, secret
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway


@dataclass(frozen=True)
class CAState:
    """A CA as leaves see it: the cert that signs them, chain certs between, and trust anchors."""

    issuer: x509.Certificate | None
    intermediates: tuple[x509.Certificate, ...] = ()
    anchors: tuple[x509.Certificate, ...] = ()

    @property
    def bundle_pem(self) -> bytes:
        return b"".join(crypto.cert_pem(c) for c in self.anchors)



def read_ca_state(gateway: VaultGateway, mount: str) -> CAState:
    """Only reads `<mount>/issuer/default/json`, which a node's policy allows (sys/mounts it does not)."""
    issuer_pem = gateway.read_ca_pem(mount)
    if issuer_pem is None:
        return CAState(issuer=None)
    issuer = crypto.load_cert(issuer_pem)
    chain = [crypto.load_cert(p) for p in gateway.read_ca_chain_pem(mount)] or [issuer]
    anchors = tuple(c for c in chain if crypto.is_self_signed(c))
    intermediates = tuple(c for c in chain if not crypto.is_self_signed(c))
    return CAState(issuer=issuer, intermediates=intermediates, anchors=anchors or (issuer,))



def observe_leaf(node: NodeOutput, rc: ResolvedCert) -> ObservedLeaf:
    cert_pem, key_pem = node.read_pki(rc.cert_file), node.read_pki(rc.key_file)
    try:
        cert = crypto.load_certs(cert_pem)[0] if cert_pem else None
    except ValueError:
        cert = None
    try:
        key = crypto.load_key(key_pem) if key_pem else None
    except (ValueError, TypeError):
        key = None
    return ObservedLeaf(cert, key)


def reissue_reasons(out: Path, certs: Sequence[ResolvedCert], issuer_pems: dict[str, bytes | None],
                    now: datetime, force: bool) -> list[str | None]:
    """plan.leaves.reissue_reason of each cert as it is on disk under out, its CA's issuer given as
    PEM: plain data in and out, so bootstrap can run this in a second process."""
    issuers = {ca: crypto.load_certs(pem)[:1] if pem else [] for ca, pem in issuer_pems.items()}
    return [reissue_reason(rc, observe_leaf(NodeOutput(out, rc.node), rc), issuers[rc.spec.ca], now, force)
            for rc in certs]


@dataclass(frozen=True)
class IssuedLeaf:
    cert: ResolvedCert
    cert_pem: bytes  # leaf followed by any intermediates
    key_pem: bytes


def key_and_csr_args(rc: ResolvedCert) -> tuple:
    return rc.key_type, rc.common_name, rc.organization, rc.dns_sans, rc.ip_sans


def issue_leaf(gateway: VaultGateway, rc: ResolvedCert, key_and_csr: tuple[bytes, str] | None = None) -> IssuedLeaf:
    """The key is made on this host (here, or given: made by bootstrap's key processes) and is never
    sent anywhere; Vault only sees the CSR."""
    key_pem, csr = key_and_csr or crypto.new_key_and_csr(*key_and_csr_args(rc))
    data = gateway.sign(rc.mount, rc.role, csr, int(rc.ttl.total_seconds()))
    chain = [c for c in (data.get("ca_chain") or []) if not _is_anchor(c)]
    pem = "\n".join(p.strip() for p in [data["certificate"], *chain]) + "\n"
    return IssuedLeaf(rc, pem.encode(), key_pem)



@functools.lru_cache(maxsize=32)
def _is_anchor(pem: str) -> bool:
    """Every sign returns the same few chain PEMs: parse and check each once, not per leaf."""
    return crypto.is_self_signed(crypto.load_cert(pem))


def leaf_changes(leaf: IssuedLeaf) -> dict[str, FileContent]:
    """A cert and its key always travel together, in one payload update."""
    return {leaf.cert.cert_file: public(leaf.cert_pem), leaf.cert.key_file: secret(leaf.key_pem)}


def ca_bundle_changes(control_plane: bool, cas: dict[str, CAState], mount_of) -> dict[str, FileContent]:
    """The CA files a node needs: every CA whose certificates it holds."""
    changes: dict[str, FileContent] = {}
    for ca in catalog.cas_for(control_plane):
        if cas[ca.name].issuer is None:
            raise VaultError(f"CA {mount_of(ca.name)} has no certificate: run `vaultk8s bootstrap` first")
        changes[ca.cert_file] = public(cas[ca.name].bundle_pem)
    return changes
