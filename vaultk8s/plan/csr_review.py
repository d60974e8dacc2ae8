"""What the CSR signer does with one CertificateSigningRequest. Pure: no I/O, no clock.

Input: a plain view of the CSR (the controller converts the API object) and the cluster file.
Output: a Verdict: skip it, approve it, deny it, sign it with a node's own Vault role, or fail it,
each refusal with a machine-readable reason (the condition's reason and the metric label) and a
one-line message. The checks mirror what the node's Vault role would enforce, plus what only
Kubernetes knows (who asked), so a refusal is explained instead of being a Vault 400.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

from vaultk8s import catalog
from vaultk8s.config import ClusterConfig, NodeSpec
from vaultk8s.crypto import cert_pem, is_self_signed, key_type_of, load_certs
from vaultk8s.hostnames import is_ip
from vaultk8s.plan.resolve import resolve_cert

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
SIGNER_CERTS = {CLIENT_SIGNER: "kubelet-client", SERVING_SIGNER: "kubelet-serving"}

NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
BOOTSTRAP_PREFIX = "system:bootstrap:"
BOOTSTRAPPERS_GROUP = "system:bootstrappers"

# What Kubernetes documents for each signer name: key encipherment is optional (RSA keys use it).
_ALLOWED_USAGES = {
    CLIENT_SIGNER: (frozenset({"digital signature", "client auth"}),
                    frozenset({"digital signature", "key encipherment", "client auth"})),
    SERVING_SIGNER: (frozenset({"digital signature", "server auth"}),
                     frozenset({"digital signature", "key encipherment", "server auth"})),
}


class Decision(str, Enum):
    SKIP = "skip"  # not ours, not yet approved, or already final
    APPROVE = "approve"  # --approve-serving: a pending serving CSR that passes every check
    DENY = "deny"  # --approve-serving: a pending serving CSR that fails a check
    SIGN = "sign"
    FAIL = "fail"  # approved, but it fails a check: a Failed condition, nothing signed


@dataclass(frozen=True)
class CsrView:
    """The fields of a CertificateSigningRequest the checks read."""

    name: str
    signer_name: str
    username: str
    groups: tuple[str, ...]
    usages: tuple[str, ...]
    request: bytes  # PEM
    expiration_seconds: int | None = None
    approved: bool = False
    denied: bool = False
    failed: bool = False
    issued: bool = False  # status.certificate is set


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str = ""  # CamelCase, as Kubernetes condition reasons are
    message: str = ""
    mount: str = ""
    role: str = ""
    ttl_seconds: int = 0


class Refusal(Exception):
    """A failed check (internal: becomes a DENY or FAIL verdict)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def skipped(csr: CsrView, approve_serving: bool = False) -> Verdict | None:
    """The SKIP verdict of a CSR that is not the signer's to act on, decided without parsing its
    request; None when review_csr must look at it."""
    if csr.signer_name not in SIGNER_CERTS:
        return Verdict(Decision.SKIP, "OtherSigner", f"signer {csr.signer_name} is not ours")
    if csr.issued or csr.failed or csr.denied:
        return Verdict(Decision.SKIP, "Final", "already issued, failed or denied")
    serving = csr.signer_name == SERVING_SIGNER
    if not csr.approved and not (serving and approve_serving):
        return Verdict(Decision.SKIP, "Pending", "waiting for an approver")
    return None


def review_csr(csr: CsrView, config: ClusterConfig, approve_serving: bool = False) -> Verdict:
    skip = skipped(csr, approve_serving)
    if skip is not None:
        return skip
    try:
        node = check_csr(csr, config)
    except Refusal as refused:
        decision = Decision.FAIL if csr.approved else Decision.DENY
        return Verdict(decision, refused.reason, refused.message)
    if not csr.approved:
        return Verdict(Decision.APPROVE, "VaultK8sApproved", f"kubelet serving certificate of node {node.name}")
    resolved = resolve_cert(catalog.cert(SIGNER_CERTS[csr.signer_name]), node, config)
    max_ttl = int(resolved.ttl.total_seconds())
    ttl = min(csr.expiration_seconds, max_ttl) if csr.expiration_seconds else max_ttl
    return Verdict(Decision.SIGN, "Signed", f"signed with role {resolved.role}", resolved.mount, resolved.role, ttl)


def check_csr(csr: CsrView, config: ClusterConfig) -> NodeSpec:
    """Every check; returns the node the CSR is for, or raises Refusal with the first problem."""
    request = _parse(csr.request)
    _check_key(request, config)
    _check_usages(csr)
    node_name = _check_subject(request)
    node = _node(config, node_name)
    _check_requester(csr, node_name)
    _check_sans(csr.signer_name, request, node)
    return node


def _parse(pem: bytes) -> x509.CertificateSigningRequest:
    try:
        request = x509.load_pem_x509_csr(pem)
    except ValueError:
        raise Refusal("BadRequest", "spec.request is not a PEM certificate request") from None
    if not request.is_signature_valid:
        raise Refusal("BadRequest", "the request's signature does not verify")
    return request


def _check_key(request: x509.CertificateSigningRequest, config: ClusterConfig) -> None:
    try:
        found = key_type_of(request.public_key())
    except (ValueError, TypeError):  # unsupported algorithms cannot even be loaded
        found = "unknown"
    if found != config.key_type:
        raise Refusal("UnsupportedKeyType", f"key type {found} is not the cluster's ({config.key_type})")


def _check_usages(csr: CsrView) -> None:
    usages = frozenset(csr.usages)
    if len(usages) != len(csr.usages) or usages not in _ALLOWED_USAGES[csr.signer_name]:
        allowed = " or ".join("[" + ", ".join(sorted(u)) + "]" for u in _ALLOWED_USAGES[csr.signer_name])
        raise Refusal("BadUsages", f"usages [{', '.join(csr.usages)}] are not what {csr.signer_name} allows: {allowed}")


def _check_subject(request: x509.CertificateSigningRequest) -> str:
    subject = request.subject
    others = [a.oid.dotted_string for a in subject if a.oid not in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)]
    if others:
        raise Refusal("BadSubject", f"subject has attributes other than CN and O ({', '.join(others)})")
    cns = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if len(cns) != 1 or not cns[0].startswith(NODE_PREFIX) or len(cns[0]) == len(NODE_PREFIX):
        raise Refusal("BadCommonName", f"CN {cns!r} is not one system:node:<node>")
    orgs = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    if orgs != [NODES_GROUP]:
        raise Refusal("BadOrganization", f"O {orgs!r} is not exactly [{NODES_GROUP!r}]")
    return cns[0][len(NODE_PREFIX):]


def _node(config: ClusterConfig, name: str) -> NodeSpec:
    for node in config.nodes:
        if node.name == name:
            return node
    raise Refusal("UnknownNode", f"node {name!r} is not in the cluster file")


def _check_requester(csr: CsrView, node_name: str) -> None:
    if csr.username == NODE_PREFIX + node_name and NODES_GROUP in csr.groups:
        return  # renewal: the node's own client certificate
    bootstrap = csr.username.startswith(BOOTSTRAP_PREFIX) and BOOTSTRAPPERS_GROUP in csr.groups
    if bootstrap and csr.signer_name == CLIENT_SIGNER:
        return  # TLS bootstrap with a bootstrap token; only client certificates
    raise Refusal("RequesterMismatch", f"requested by {csr.username!r}, not by node {node_name} itself"
                  + (" or a bootstrap token" if csr.signer_name == CLIENT_SIGNER else ""))


def _check_sans(signer_name: str, request: x509.CertificateSigningRequest, node: NodeSpec) -> None:
    try:
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = x509.SubjectAlternativeName([])
    dns = sans.get_values_for_type(x509.DNSName)
    ips = [ipaddress.ip_address(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    other = [n for n in sans if not isinstance(n, (x509.DNSName, x509.IPAddress))]
    if signer_name == CLIENT_SIGNER:
        if dns or ips or other:
            raise Refusal("UnexpectedSANs", "a kubelet client certificate carries no subject alternative names")
        return
    if other:
        raise Refusal("UnexpectedSANs", "only DNS and IP subject alternative names are allowed")
    if not dns and not ips:
        raise Refusal("NoSANs", "a kubelet serving certificate needs the node's name or an IP")
    owned_dns = {node.name, *(s for s in node.sans if not is_ip(s))}
    owned_ips = {*node.ips, *(ipaddress.ip_address(s) for s in node.sans if is_ip(s))}
    foreign = [d for d in dns if d not in owned_dns] + [str(ip) for ip in ips if ip not in owned_ips]
    if foreign:
        raise Refusal("SANNotOwned", f"node {node.name} does not own {', '.join(foreign)}")


def status_certificate(leaf_pem: str, ca_chain_pems: list[str]) -> bytes:
    """The leaf and the intermediates a verifier needs; the root stays out (kubelets trust ca.crt)."""
    chain = [leaf_pem.strip(), *(pem for pem in _intermediates(tuple(ca_chain_pems)) if pem != leaf_pem.strip())]
    return ("\n".join(chain) + "\n").encode()


@functools.lru_cache(maxsize=8)  # every sign of a mount returns the same chain: check its signatures once
def _intermediates(ca_chain_pems: tuple[str, ...]) -> tuple[str, ...]:
    found: list[str] = []
    for pem in ca_chain_pems:
        for cert in load_certs(pem):
            text = cert_pem(cert).decode().strip()
            if not is_self_signed(cert) and text not in found:
                found.append(text)
    return tuple(found)
