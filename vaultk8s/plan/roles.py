"""Vault PKI role parameters derived from resolved certificates: each role pins exactly one identity."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

from vaultk8s.catalog import Usage
from vaultk8s.hostnames import is_dns_subdomain, is_ip
from vaultk8s.keytypes import vault_key_params
from vaultk8s.plan.resolve import ResolvedCert

# Settings that are the same for every role; each closes a default that would widen what a
# CSR may obtain (see shared/reference/k8s-pki.md, "Vault/OpenBao PKI roles").
_FIXED: dict[str, Any] = {
    "allow_any_name": False,
    "allow_bare_domains": True,
    "allow_subdomains": False,
    "allow_glob_domains": False,
    "allow_wildcard_certificates": False,
    "allowed_domains_template": False,
    "allow_token_displayname": False,
    "allowed_uri_sans": [],
    "allowed_other_sans": [],
    "allowed_serial_numbers": [],
    "allowed_user_ids": [],
    "code_signing_flag": False,
    "email_protection_flag": False,
    "ext_key_usage": [],
    "ext_key_usage_oids": [],
    "basic_constraints_valid_for_non_ca": False,
    "cn_validations": ["email", "hostname"],  # never "disabled": that signs any CN
    "use_csr_common_name": True,
    "use_csr_sans": True,
    "require_cn": True,
    "ou": [],
    "generate_lease": False,
    "no_store": False,
    "issuer_ref": "default",
}

@dataclass(frozen=True)
class ResolvedRole:
    mount: str
    name: str
    params: dict[str, Any]


def role_params(cert: ResolvedCert) -> dict[str, Any]:
    key_type, key_bits = vault_key_params(cert.key_type)
    names = [cert.common_name, *cert.dns_sans]
    ttl = int(cert.ttl.total_seconds())
    usage = ["DigitalSignature"] + (["KeyEncipherment"] if key_type == "rsa" else [])
    return {
        **_FIXED,
        "allowed_domains": list(dict.fromkeys(names)),
        "enforce_hostnames": all(is_dns_subdomain(n) for n in names),
        "allow_localhost": "localhost" in cert.dns_sans,
        "allow_ip_sans": bool(cert.ip_sans),
        "allowed_ip_sans_cidr": [str(ipaddress.ip_network(ip)) for ip in cert.ip_sans],
        "server_flag": Usage.SERVER in cert.usages,
        "client_flag": Usage.CLIENT in cert.usages,
        "key_type": key_type,
        "key_bits": key_bits,
        "key_usage": usage,
        "organization": [cert.organization] if cert.organization else [],
        "ttl": ttl,
        "max_ttl": ttl,
    }


def resolve_roles(certs: Iterable[ResolvedCert]) -> tuple[ResolvedRole, ...]:
    """One role per (mount, role name); shared roles resolve identically on every node."""
    roles: dict[tuple[str, str], ResolvedRole] = {}
    for cert in certs:
        roles.setdefault((cert.mount, cert.role), ResolvedRole(cert.mount, cert.role, role_params(cert)))
    return tuple(roles.values())


def role_drift(desired: dict[str, Any], observed: dict[str, Any] | None) -> list[str]:
    """Names of the parameters whose observed value differs; [] when the role matches."""
    if observed is None:
        return ["(missing)"]
    return [key for key, want in desired.items() if _normal(observed.get(key)) != _normal(want)]


def _normal(value: Any) -> Any:
    if isinstance(value, list):
        return sorted(_normal_item(str(v)) for v in value)
    return value


def _normal_item(text: str) -> str:
    """Vault stores a single-address CIDR as the bare address (10.0.0.1/32 reads back as 10.0.0.1,
    fd00::1/128 as fd00::1) and IPv6 in its compressed form: compare what the CIDR means."""
    if "/" not in text and not is_ip(text):
        return text
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return text
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return str(network)

