"""Every name vaultk8s gives a Vault object, and the inverse: which node or generation a name is for. Pure.

Policies, auth mounts, token roles and identity entities are global in Vault, not per mount, so
each carries the cluster's mount prefix and several clusters can share one Vault. Names are built
and parsed back only here. A parsed name says which node it would be for under this cluster's
scheme, never that the object is this cluster's: plan/prune.py decides that on content.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from vaultk8s.config import ClusterConfig

NODE_METADATA_KEY = "node"  # on a node's identity entity, written only by `vaultk8s policy apply`
NODE_TEMPLATE = "{{identity.entity.metadata." + NODE_METADATA_KEY + "}}"  # that metadata in a policy path
REVOKED_METADATA_KEY = "revoked"  # on a revoked node's (disabled, alias-less) entity: `node revoke` time
CSR_SIGNER_APPROLE_ROLE = "csr-signer"  # on the cluster's AppRole mount; never `node-<name>`
CSR_SIGNER_JWT_ROLE = "csr-signer"  # on the cluster's JWT mount (issue 17's Contract names it)
SIGNER_JWT_AUDIENCE = "vaultk8s"  # the projected token's audience (deploy/signer/signer.yaml)

_NODE = "node-"
_UNTIL = re.compile(r"-until-(\d{8}t\d{6}z)$")
_UNTIL_FORMAT = "%Y%m%dt%H%M%Sz"
CROSS_PREFIX = "cross-g"
RETIRED_PREFIX = "retired-g"
_GEN = re.compile(r"-g(\d+)(?:-|$)")  # an issuer or token object name's rotation generation


def _slug(config: ClusterConfig) -> str:
    return config.mount_prefix.replace("/", "-")


def policy_name(config: ClusterConfig, kind: str) -> str:
    """The ACL policy of one identity kind, policies/<kind>.hcl in Vault."""
    return f"vaultk8s-{_slug(config)}{kind}"


def approle_mount(config: ClusterConfig) -> str:
    """The cluster's AppRole auth mount; prefix "" gives Vault's default `approle`, which others may share."""
    return f"{config.mount_prefix}approle"


def cert_mount(config: ClusterConfig) -> str:
    """The cluster's TLS certificate auth mount: nodes log in with their own kubelet-client certificate."""
    return f"{config.mount_prefix}cert"


def cert_entry(node: str) -> str:
    """The node's entry on the cert mount (`certs/<entry>`), named like its AppRole role."""
    return approle_role(node)


def cert_alias(node: str) -> str:
    """The entity alias name Vault gives a cert login: the certificate's CN."""
    return f"system:node:{node}"


def node_of_cert_entry(name: str) -> str | None:
    """The node a cert entry name on this cluster's cert mount is for, or None."""
    return _after(_NODE, name)
def jwt_mount(config: ClusterConfig) -> str:
    """The cluster's JWT auth mount: the CSR signer logs in with its projected ServiceAccount token."""
    return f"{config.mount_prefix}jwt"


def approle_role(node: str) -> str:
    """The node's AppRole role on the cluster's own mount (approle_mount), so no slug."""
    return f"{_NODE}{node}"


def token_display_name(node: str) -> str:
    """Vault shows the node's plain tokens as `token-<approle role>`, i.e. `token-node-<node>`."""
    return approle_role(node)


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


# --- names inside one PKI mount and one HSM token: a CA's rotation generations -----------------

def generation_of(issuer_name: str) -> int:
    """The generation an issuer or token object name carries (`root-g3` -> 3); 1 when none."""
    match = _GEN.search(issuer_name or "")
    return int(match.group(1)) if match else 1


ADOPTED_ROOT = "adopted"  # generation 1 of an adopted CA: kubeadm's root, imported with its key (docs/adopt.md)


def root_name(generation: int) -> str:
    """A generation's signing root in the mount (the first one is bootstrap's `root`)."""
    return "root" if generation == 1 else f"root-g{generation}"


def cross_name(generation: int) -> str:
    """Generation N's key signed by the previous root."""
    return f"{CROSS_PREFIX}{generation}"


def retired_name(generation: int, until: datetime) -> str:
    """An old root kept, without issuing usage, until every leaf it signed has expired."""
    return f"{RETIRED_PREFIX}{generation}-until-{until.astimezone(timezone.utc).strftime(_UNTIL_FORMAT)}"


def retired_until_of(issuer_name: str) -> datetime | None:
    """The inverse of retired_name's `until`; None for a name that is not a retired root."""
    match = _UNTIL.search(issuer_name)
    return datetime.strptime(match.group(1), _UNTIL_FORMAT).replace(tzinfo=timezone.utc) if match else None


def token_root_name(ca_name: str, generation: int) -> str:
    """HSM mode: the token object name of a generation's root (the first one is bootstrap's)."""
    return ca_name if generation == 1 else f"{ca_name}-g{generation}"


def intermediate_name(generation: int) -> str:
    """HSM mode: the mount's signing intermediate of a generation, under its token root."""
    return f"intermediate-g{generation}"


def hsm_root_name(generation: int) -> str:
    """HSM mode: the keyless issuer that holds a generation's token root certificate."""
    return f"hsm-root-g{generation}"
