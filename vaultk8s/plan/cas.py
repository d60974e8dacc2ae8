"""What a CA mount needs: mount, TTL tuning, root or HSM-signed intermediate, URLs.

Pure: observed state (the mount, and in HSM mode the token's root fingerprint) comes in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaultk8s import crypto
from vaultk8s.catalog import CASpec
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PlanRefused
from vaultk8s.keytypes import vault_key_params
from vaultk8s.plan.actions import Action
from vaultk8s.plan.naming import ADOPTED_ROOT


@dataclass(frozen=True)
class ObservedCA:
    mount_type: str | None
    ca_pem: str | None = None
    max_ttl: int = 0
    urls: dict[str, Any] = field(default_factory=dict)
    chain_pem: tuple[str, ...] = ()  # the default issuer's ca_chain, issuer first
    hsm_root_sha256: str | None = None  # the token's root cert for this CA (HSM mode), hex
    auto_tidy: dict[str, Any] = field(default_factory=dict)
    issuer_name: str = ""  # the default issuer's name


# Short-lived leaves renewed by every node pile up in the certificate store (1000 nodes: ~4500 a
# day); tidy removes them 3 days after expiry, and the matching revocation entries.
AUTO_TIDY: dict[str, Any] = {
    "enabled": True, "tidy_cert_store": True, "tidy_revoked_certs": True,
    "tidy_revoked_cert_issuer_associations": True, "safety_buffer": 259200, "interval_duration": 43200,
}


def mount_ttl_seconds(config: ClusterConfig) -> int:
    return int(config.ca_ttl.total_seconds())


def root_params(ca: CASpec, config: ClusterConfig) -> dict[str, Any]:
    key_type, key_bits = vault_key_params(config.key_type)
    return {
        "common_name": ca.common_name, "key_type": key_type, "key_bits": key_bits,
        "ttl": f"{mount_ttl_seconds(config)}s", "issuer_name": "root", "key_name": "root",
        "exclude_cn_from_sans": True,
    }


def intermediate_params(ca: CASpec, config: ClusterConfig) -> dict[str, Any]:
    """The Vault-held intermediate signs leaves, so it takes the leaf key type (pki.key_type),
    as the Vault-held root does without an HSM; hsm.key_type is for the roots in the token."""
    key_type, key_bits = vault_key_params(config.key_type)
    return {
        "common_name": f"{ca.common_name}-intermediate", "key_type": key_type, "key_bits": key_bits,
        "key_name": "intermediate", "exclude_cn_from_sans": True,
    }


def url_params(mount: str, vault_addr: str) -> dict[str, list[str]]:
    base = f"{vault_addr.rstrip('/')}/v1/{mount}"
    return {"issuing_certificates": [f"{base}/ca"], "crl_distribution_points": [f"{base}/crl"]}


def plan_ca(ca: CASpec, config: ClusterConfig, observed: ObservedCA, vault_addr: str) -> list[Action]:
    mount = config.mount(ca.name)
    if observed.mount_type not in (None, "pki"):
        raise PlanRefused(
            f"Vault path {mount}/ is already a {observed.mount_type!r} engine, not PKI: "
            "choose another vault.mount_prefix or move that engine"
        )
    actions = []
    if observed.mount_type is None:
        actions.append(Action("enable-mount", mount, "PKI mount missing"))
    elif observed.max_ttl < mount_ttl_seconds(config):
        actions.append(Action("tune-mount", mount, "max lease TTL below the CA TTL"))
    if observed.ca_pem is None:
        actions.append(_new_ca_action(ca, config, observed))
    else:
        check_ca_mode(ca, config, observed)
    want_urls = url_params(mount, vault_addr)
    if any(sorted(observed.urls.get(k) or []) != v for k, v in want_urls.items()):
        actions.append(Action("configure-urls", mount, "issuing/CRL URLs not set"))
    if any(observed.auto_tidy.get(k) != v for k, v in AUTO_TIDY.items()):
        actions.append(Action("configure-tidy", mount, "auto-tidy of expired certificates not enabled"))
    return actions


def _new_ca_action(ca: CASpec, config: ClusterConfig, observed: ObservedCA) -> Action:
    mount = config.mount(ca.name)
    if config.hsm is None:
        return Action("generate-root", mount, f"no CA yet: CN={ca.common_name}, key stays in Vault")
    root = "existing root" if observed.hsm_root_sha256 else "new root"
    return Action("hsm-intermediate", mount, f"no CA yet: intermediate signed by the HSM root ({root} in the token)")


def check_ca_mode(ca: CASpec, config: ClusterConfig, observed: ObservedCA) -> None:
    """Refuse to switch a live CA between Vault-held and HSM-held roots: either way the CA
    changes, and every certificate, kubeconfig and ca.crt on every node would need re-trust."""
    mount = config.mount(ca.name)
    issuer = crypto.load_cert(observed.ca_pem)
    if config.hsm is not None and crypto.is_self_signed(issuer) and observed.issuer_name != ADOPTED_ROOT:
        raise PlanRefused(
            f"{mount} already has a CA whose root key is in Vault; HSM mode would replace it with a new "
            "CA that every node, kubeconfig and certificate would have to re-trust: remove the hsm: block, "
            "or use a new vault.mount_prefix for a fresh cluster (docs/hsm.md, mode switching)"
        )
    if config.hsm is None and not crypto.is_self_signed(issuer):
        raise PlanRefused(
            f"{mount} holds an intermediate signed by a root outside Vault (HSM mode); without the hsm: "
            "block vaultk8s would not check that root: restore the hsm: block (docs/hsm.md, mode switching)"
        )
    if config.hsm is not None and crypto.is_self_signed(issuer):
        return  # adopted: kubeadm's root stays in Vault until `ca rotate` moves the CA to a token root
    if config.hsm is not None and not _signed_by_token_root(issuer, observed):
        found = f"sha256 {observed.hsm_root_sha256}" if observed.hsm_root_sha256 else "none"
        raise PlanRefused(
            f"{mount}'s intermediate is not signed by the token's root for {ca.name} (token root: {found}); "
            "point the hsm: block at the token that holds this cluster's roots"
        )


def _signed_by_token_root(issuer, observed: ObservedCA) -> bool:
    if observed.hsm_root_sha256 is None:
        return False
    chain = [crypto.load_cert(p) for p in observed.chain_pem]
    roots = [c for c in chain if crypto.fingerprint(c) == observed.hsm_root_sha256]
    return any(crypto.signed_by(issuer, root) for root in roots)
