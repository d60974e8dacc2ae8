"""Every Vault-global name of one cluster, and the inverse: which node a name is for. Pure.

Policies, auth mounts, token roles and identity entities are global in Vault, not per mount, so
each carries the cluster's mount prefix and several clusters can share one Vault. Names are built
and parsed back only here. A parsed name says which node it would be for under this cluster's
scheme, never that the object is this cluster's: plan/prune.py decides that on content.
"""

from __future__ import annotations

from vaultk8s.config import ClusterConfig

NODE_METADATA_KEY = "node"  # on a node's identity entity, written only by `vaultk8s policy apply`
NODE_TEMPLATE = "{{identity.entity.metadata." + NODE_METADATA_KEY + "}}"  # that metadata in a policy path
CSR_SIGNER_APPROLE_ROLE = "csr-signer"  # on the cluster's AppRole mount; never `node-<name>`
CSR_SIGNER_JWT_ROLE = "csr-signer"  # on the cluster's JWT mount (issue 17's Contract names it)
SIGNER_JWT_AUDIENCE = "vaultk8s"  # the projected token's audience (deploy/signer/signer.yaml)

_NODE = "node-"


def _slug(config: ClusterConfig) -> str:
    return config.mount_prefix.replace("/", "-")


def policy_name(config: ClusterConfig, kind: str) -> str:
    """The ACL policy of one identity kind, policies/<kind>.hcl in Vault."""
    return f"vaultk8s-{_slug(config)}{kind}"


def approle_mount(config: ClusterConfig) -> str:
    """The cluster's AppRole auth mount; prefix "" gives Vault's default `approle`, which others may share."""
    return f"{config.mount_prefix}approle"


def jwt_mount(config: ClusterConfig) -> str:
    """The cluster's JWT auth mount: the CSR signer logs in with its projected ServiceAccount token."""
    return f"{config.mount_prefix}jwt"


def approle_role(node: str) -> str:
    """The node's AppRole role on the cluster's own mount (approle_mount), so no slug."""
    return f"{_NODE}{node}"


def token_display_name(node: str) -> str:
    """Vault shows the node's plain tokens as `token-node-<node>`."""
    return f"{_NODE}{node}"


def entity_name(config: ClusterConfig, node: str) -> str:
    """Also the entity alias name on the token auth mount and the token role's name."""
    return f"vaultk8s-{_slug(config)}{_NODE}{node}"


def node_of_approle_role(name: str) -> str | None:
    """The node an AppRole role name on this cluster's mount is for, or None."""
    return _after(_NODE, name)


def node_of_entity_name(config: ClusterConfig, name: str) -> str | None:
    """The node a token role or entity name is for under this cluster's scheme, or None."""
    return _after(entity_name(config, ""), name)


def _after(prefix: str, name: str) -> str | None:
    return (name[len(prefix):] or None) if name.startswith(prefix) else None
