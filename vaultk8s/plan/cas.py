"""What a CA mount needs: mount, TTL tuning, root, URLs. Pure: observed state comes in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vaultk8s.catalog import CASpec
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PlanRefused
from vaultk8s.plan.actions import Action
from vaultk8s.plan.roles import _KEY_PARAMS


@dataclass(frozen=True)
class ObservedCA:
    mount_type: str | None
    ca_pem: str | None = None
    max_ttl: int = 0
    urls: dict[str, Any] = field(default_factory=dict)


def mount_ttl_seconds(config: ClusterConfig) -> int:
    return int(config.ca_ttl.total_seconds())


def root_params(ca: CASpec, config: ClusterConfig) -> dict[str, Any]:
    key_type, key_bits = _KEY_PARAMS[config.key_type]
    return {
        "common_name": ca.common_name, "key_type": key_type, "key_bits": key_bits,
        "ttl": f"{mount_ttl_seconds(config)}s", "issuer_name": "root", "key_name": "root",
        "exclude_cn_from_sans": True,
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
        actions.append(Action("generate-root", mount, f"no CA yet: CN={ca.common_name}, key stays in Vault"))
    want_urls = url_params(mount, vault_addr)
    if any(sorted(observed.urls.get(k) or []) != v for k, v in want_urls.items()):
        actions.append(Action("configure-urls", mount, "issuing/CRL URLs not set"))
    return actions
