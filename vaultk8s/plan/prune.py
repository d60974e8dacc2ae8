"""Machine credentials of nodes removed from the cluster file: what `policy apply` deletes. Pure.

`policy apply` creates, per node, an AppRole role `node-<node>` on the cluster's AppRole mount, a
token role and an identity entity, both named `vaultk8s-<slug>node-<node>`. When a node leaves the
cluster file these stay in Vault: the old secret_id still logs in, and a node added later under the
same name would inherit the old entity (and so the live tokens bound to it). This module decides,
from what ops read in Vault, which of those objects are stale.

Ownership is decided on content, never on the name alone, because the names do not separate
clusters on their own: prefix `""` gives `vaultk8s-node-x-node-a` for node `x-node-a`, and prefix
`node-x/` gives the same name for node `a`; prefix `""` also uses Vault's default `approle/` path,
which others may share. An object is this cluster's only if
- AppRole role `node-<n>` on this cluster's mount, or cert entry `node-<n>` on its cert mount: its
  token_policies are all this cluster's vaultk8s policies (and there is at least one);
- token role: the same for allowed_policies, and it binds only to its own entity alias name;
- entity: metadata `node=<n>` and `cluster=<cluster name>` with `entity_name(config, n)` equal
  to its name, and aliases only on this cluster's AppRole or cert mount or the token mount.
Objects that carry the naming scheme but fail the check are kept and reported (`Skipped`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from vaultk8s.config import ClusterConfig
from vaultk8s.plan.grants import policy_kinds
from vaultk8s.plan.naming import (NODE_METADATA_KEY, approle_mount, cert_mount, entity_name, node_of_approle_role,
                                  node_of_cert_entry, node_of_entity_name, policy_name)

APPROLE_ROLE = "approle-role"
CERT_ENTRY = "cert-entry"
TOKEN_ROLE = "token-role"
ENTITY = "entity"


@dataclass(frozen=True)
class Observed:
    """What ops read in Vault. Listed names with the data read for each (None: gone since the list).

    approle_roles: role name on this cluster's AppRole mount -> role data; token_roles and entities:
    name -> data, only for names `candidate_*` selected. Accessors: None when the mount does not exist.
    """

    approle_roles: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    token_roles: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    entities: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    approle_accessor: str | None = None
    token_accessor: str | None = None
    cert_entries: Mapping[str, dict[str, Any] | None] = field(default_factory=dict)
    cert_accessor: str | None = None


@dataclass(frozen=True)
class Stale:
    kind: str  # approle-role | cert-entry | token-role | entity
    node: str
    path: str  # the Vault path that is deleted


@dataclass(frozen=True)
class Skipped:
    kind: str
    path: str
    reason: str


@dataclass(frozen=True)
class PrunePlan:
    stale: tuple[Stale, ...] = ()
    skipped: tuple[Skipped, ...] = ()


# --- candidates: names of nodes no longer in the cluster file --------------------------------------

def _removed(config: ClusterConfig, node: str | None) -> bool:
    return node is not None and node not in {n.name for n in config.nodes}


def candidate_approle_roles(config: ClusterConfig, names: list[str]) -> list[str]:
    """Listed AppRole role names that look like a node's and name no node in the cluster file."""
    return sorted(n for n in names if _removed(config, node_of_approle_role(n)))


def candidate_cert_entries(config: ClusterConfig, names: list[str]) -> list[str]:
    """Listed cert entry names on this cluster's cert mount that look like a node's and name no node in the file."""
    return sorted(n for n in names if _removed(config, node_of_cert_entry(n)))


def candidate_entity_names(config: ClusterConfig, names: list[str]) -> list[str]:
    """Listed token role or entity names under this cluster's scheme naming no node in the file.

    Only candidates: another cluster's objects can match the scheme (see the module docstring).
    """
    return sorted(n for n in names if _removed(config, node_of_entity_name(config, n)))


# --- ownership ------------------------------------------------------------------------------------

def _own_policies(config: ClusterConfig) -> set[str]:
    return {policy_name(config, kind) for kind in policy_kinds()}


def _policies_problem(config: ClusterConfig, policies: Any) -> str | None:
    values = [str(p) for p in (policies or [])]
    if not values:
        return "carries no policies (not written by vaultk8s)"
    foreign = sorted(set(values) - _own_policies(config))
    if foreign:
        return "carries policies that are not this cluster's vaultk8s policies: " + ", ".join(foreign)
    return None


def approle_role_problem(config: ClusterConfig, data: Mapping[str, Any]) -> str | None:
    return _policies_problem(config, data.get("token_policies") or data.get("policies"))


def token_role_problem(config: ClusterConfig, name: str, data: Mapping[str, Any]) -> str | None:
    problem = _policies_problem(config, data.get("allowed_policies"))
    if problem:
        return problem
    aliases = [str(a) for a in (data.get("allowed_entity_aliases") or [])]
    if aliases != [name]:
        return f"allowed_entity_aliases {aliases} is not just its own name"
    return None


def entity_problem(config: ClusterConfig, name: str, data: Mapping[str, Any], *accessors: str | None) -> str | None:
    """accessors: this cluster's auth mounts (AppRole, cert, token); aliases elsewhere make it not ours."""
    metadata = data.get("metadata") or {}
    node = metadata.get(NODE_METADATA_KEY)
    if not node or entity_name(config, str(node)) != name:
        return f"metadata node={node!r} does not give this name under this cluster's prefix"
    if metadata.get("cluster") != config.name:
        return f"metadata cluster={metadata.get('cluster')!r}, not {config.name!r}"
    ours = {a for a in accessors if a}
    for alias in data.get("aliases") or []:
        if alias.get("mount_accessor") not in ours:
            return f"has an alias on another auth mount ({alias.get('mount_path') or alias.get('mount_accessor')})"
    return None


# --- the plan -------------------------------------------------------------------------------------

def plan_prune(config: ClusterConfig, observed: Observed) -> PrunePlan:
    """Stale objects in deletion order per node: AppRole role and cert entry (no new logins), token role (no new
    tokens), entity (live tokens lose their templated paths; OpenBao refuses tokens whose entity is gone)."""
    stale: list[Stale] = []
    skipped: list[Skipped] = []
    mount = approle_mount(config)

    def consider(kind: str, node: str | None, path: str, data: Mapping[str, Any] | None, problem) -> None:
        if data is None or node is None:
            return  # deleted since it was listed, or not under this cluster's scheme
        reason = problem(data)
        if reason:
            skipped.append(Skipped(kind, path, reason))
        else:
            stale.append(Stale(kind, node, path))

    for name in candidate_approle_roles(config, list(observed.approle_roles)):
        consider(APPROLE_ROLE, node_of_approle_role(name), f"auth/{mount}/role/{name}",
                 observed.approle_roles[name], lambda d: approle_role_problem(config, d))
    cert = cert_mount(config)
    for name in candidate_cert_entries(config, list(observed.cert_entries)):
        consider(CERT_ENTRY, node_of_cert_entry(name), f"auth/{cert}/certs/{name}",
                 observed.cert_entries[name], lambda d: approle_role_problem(config, d))
    for name in candidate_entity_names(config, list(observed.token_roles)):
        consider(TOKEN_ROLE, node_of_entity_name(config, name), f"auth/token/roles/{name}",
                 observed.token_roles[name], lambda d, n=name: token_role_problem(config, n, d))
    for name in candidate_entity_names(config, list(observed.entities)):
        consider(ENTITY, node_of_entity_name(config, name), f"identity/entity/name/{name}",
                 observed.entities[name],
                 lambda d, n=name: entity_problem(config, n, d, observed.approle_accessor, observed.cert_accessor,
                                                  observed.token_accessor))
    order = {APPROLE_ROLE: 0, CERT_ENTRY: 1, TOKEN_ROLE: 2, ENTITY: 3}
    stale.sort(key=lambda s: (s.node, order[s.kind]))
    skipped.sort(key=lambda s: s.path)
    return PrunePlan(tuple(stale), tuple(skipped))
