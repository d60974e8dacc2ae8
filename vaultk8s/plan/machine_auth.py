"""Machine credentials: AppRole roles, token roles, token requests and identity entities. Pure.

A node's credential carries the policies of its identity kinds (grants.node_policy_kinds), is bound
to the node's IP addresses unless `policy.bind_cidrs` is false, and gets its limits from the
cluster file's `policy:` section (config.policy).
"""

from __future__ import annotations

from typing import Any

from vaultk8s.config import ClusterConfig, NodeSpec, PolicySettings
from vaultk8s.durations import vault_ttl, whole_seconds
from vaultk8s.plan.grants import AGENT, CSR_SIGNER, node_policy_kinds
from vaultk8s.plan.naming import (NODE_METADATA_KEY, SIGNER_JWT_AUDIENCE, cert_alias, cert_entry, entity_name,
                                  policy_name, token_display_name)


def node_policies(config: ClusterConfig, node: NodeSpec) -> list[str]:
    return sorted(policy_name(config, k) for k in node_policy_kinds(node))


def signer_policies(config: ClusterConfig) -> list[str]:
    return sorted(policy_name(config, k) for k in (AGENT, CSR_SIGNER))


def bound_cidrs(node: NodeSpec, settings: PolicySettings) -> list[str]:
    """The node's own addresses, one host CIDR each: where its secret_ids and tokens are accepted from."""
    if not settings.bind_cidrs:
        return []
    return sorted(f"{ip}/{ip.max_prefixlen}" for ip in node.ips)


def approle_params(config: ClusterConfig, node: NodeSpec) -> dict[str, Any]:
    settings = config.policy
    return _approle_role(settings, node_policies(config, node), bound_cidrs(node, settings), settings.token_num_uses)


def signer_approle_params(config: ClusterConfig) -> dict[str, Any]:
    """The CSR signer's AppRole role. It runs as a pod (no fixed IP to bind) and signs for as long
    as it runs: no use limit on its tokens, nor on its secret_id, which it logs in with again and
    again and replaces itself (`policy.secret_id_num_uses` is for node enrolment); its tokens are
    still short-lived and it logs in again."""
    return {**_approle_role(config.policy, signer_policies(config), [], 0), "secret_id_num_uses": 0}


def signer_jwt_role_params(config: ClusterConfig) -> dict[str, Any]:
    """The CSR signer's JWT role: only its own ServiceAccount's tokens minted for Vault log in."""
    settings = config.policy
    return {
        "role_type": "jwt",
        "bound_audiences": [SIGNER_JWT_AUDIENCE],
        "user_claim": "sub",
        "bound_subject": config.signer.subject,
        **_login_tokens(settings, signer_policies(config)),
    }


def jwt_config_params(config: ClusterConfig, public_pems: list[str]) -> dict[str, Any]:
    """The JWT mount's config: the keys kube-apiserver verifies with (sa.pub) and its issuer.

    Both fields in every write: a write of jwt_validation_pubkeys alone resets bound_issuer to ""
    (seen on OpenBao 2.7.2), and the operator's grant allows exactly these two.
    """
    return {"jwt_validation_pubkeys": sorted(p.strip() + "\n" for p in public_pems),
            "bound_issuer": config.service_account.issuer}


def jwt_config_drift(want: dict[str, Any], observed: dict[str, Any] | None) -> list[str]:
    """The fields of the JWT config that differ (PEMs compared without surrounding whitespace)."""
    if observed is None:
        return ["(missing)"]
    drift = []
    if sorted(p.strip() for p in observed.get("jwt_validation_pubkeys") or []) != \
            sorted(p.strip() for p in want["jwt_validation_pubkeys"]):
        drift.append("jwt_validation_pubkeys")
    if observed.get("bound_issuer") != want["bound_issuer"]:
        drift.append("bound_issuer")
    return drift


def _login_tokens(settings: PolicySettings, policies: list[str]) -> dict[str, Any]:
    """What every login method's tokens carry: these policies only, service tokens, policy: TTLs."""
    return {
        "token_policies": policies,
        "token_no_default_policy": True,
        "token_type": "service",
        "token_ttl": whole_seconds(settings.token_ttl),
        "token_max_ttl": whole_seconds(settings.token_max_ttl),
    }


def _approle_role(settings: PolicySettings, policies: list[str], cidrs: list[str],
                  token_num_uses: int) -> dict[str, Any]:
    return {
        **_login_tokens(settings, policies),
        "token_num_uses": token_num_uses,
        "token_bound_cidrs": cidrs,
        "secret_id_bound_cidrs": cidrs,
        "secret_id_ttl": whole_seconds(settings.secret_id_ttl),
        "secret_id_num_uses": settings.secret_id_num_uses,
        "bind_secret_id": True,
    }


def cert_entry_params(config: ClusterConfig, node: NodeSpec, certificate: str) -> dict[str, Any]:
    """The node's entry on the cert mount: its own kubelet-client certificate (CN system:node:<node>,
    chained to `certificate`, the kubernetes-ca trust) logs in with the node's policies only."""
    settings = config.policy
    return {
        "certificate": certificate,
        "allowed_common_names": [cert_alias(node.name)],
        "display_name": cert_entry(node.name),
        **_login_tokens(settings, node_policies(config, node)),
        "token_num_uses": settings.token_num_uses,
        "token_bound_cidrs": bound_cidrs(node, settings),
    }


def token_role_params(config: ClusterConfig, node: NodeSpec) -> dict[str, Any]:
    settings = config.policy
    return {
        "allowed_policies": node_policies(config, node),
        "allowed_entity_aliases": [entity_name(config, node.name)],
        "orphan": True,  # outlives the operator's token; bounded by its own max TTL instead
        "renewable": True,
        "token_explicit_max_ttl": whole_seconds(settings.token_max_ttl),
        "token_num_uses": settings.token_num_uses,
        "token_no_default_policy": True,
        "token_bound_cidrs": bound_cidrs(node, settings),
        "token_type": "service",
    }


def token_create_params(config: ClusterConfig, node: NodeSpec) -> dict[str, Any]:
    settings = config.policy
    return {
        "entity_alias": entity_name(config, node.name),
        "policies": node_policies(config, node),
        "no_default_policy": True,
        "ttl": vault_ttl(settings.token_ttl),
        "num_uses": settings.token_num_uses,
        "display_name": token_display_name(node.name),
    }


def entity_metadata(config: ClusterConfig, node: NodeSpec) -> dict[str, str]:
    return {NODE_METADATA_KEY: node.name, "cluster": config.name}
