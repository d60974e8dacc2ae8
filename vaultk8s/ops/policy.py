"""`vaultk8s policy render|apply|diff|review`: policies/ on disk, policies and auth roles in Vault.

apply writes, in order: the ACL policies, the cluster's AppRole mount, then deletes the AppRole
role, token role and identity entity of every node no longer in the cluster file (plan/prune.py
decides which objects are this cluster's), then per node an AppRole role and a token role, and per
node an identity entity (metadata node=<name>) with two aliases (the AppRole role_id, the token
role's alias name), and the CSR signer's AppRole role (no entity: its policy names every node), and its
JWT mount, role and keys (ops/signer_auth.py). Every step is observed first; re-running changes nothing. Writing policies and
identities needs an admin token (see docs/policies.md).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultk8s import catalog
from vaultk8s.config import ClusterConfig, NodeSpec
from vaultk8s.errors import PlanRefused, StoreError, VaultError
from vaultk8s.ops import sa as sa_ops
from vaultk8s.ops import signer_auth
from vaultk8s.plan import grants, hcl, machine_auth, naming, prune
from vaultk8s.plan.actions import Action, ActionReport
from vaultk8s.plan.review import Review, review
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.plan.roles import resolve_roles, role_drift
from vaultk8s.store.atomic import public, read_file, write_file
from vaultk8s.vault.gateway import VaultGateway

TOKEN_AUTH = "token"


@dataclass
class PolicyReport(ActionReport):
    actions: list[Action] = field(default_factory=list)
    diffs: list[str] = field(default_factory=list)  # unified diffs of policy texts
    notes: list[str] = field(default_factory=list)  # kept on purpose: look like ours, are not

    def to_dict(self) -> dict[str, Any]:
        return {"changed": self.changed, "actions": [a.to_dict() for a in self.actions], "diffs": self.diffs,
                "notes": self.notes}


# --- files ----------------------------------------------------------------------------------------

def render_to_dir(config: ClusterConfig, directory: Path) -> list[str]:
    """Write policies/<kind>.hcl; returns the names of files that changed."""
    changed = []
    for name, text in render_policies_sorted(config):
        if write_file(Path(directory) / name, public(text.encode())):
            changed.append(name)
    return changed


def render_policies_sorted(config: ClusterConfig) -> list[tuple[str, str]]:
    return sorted(hcl.render_policies(config).items())


def read_dir(directory: Path) -> dict[str, str | None]:
    """kind -> text of policies/<kind>.hcl (None when missing)."""
    if not Path(directory).is_dir():
        raise StoreError(f"policy directory {directory} does not exist: run `vaultk8s policy render`")
    texts = {}
    for kind in grants.policy_kinds():
        data = read_file(Path(directory) / f"{kind}.hcl")
        texts[kind] = data.decode() if data is not None else None
    return texts


# --- apply / diff ---------------------------------------------------------------------------------

def apply(config: ClusterConfig, gateway: VaultGateway, *, dry_run: bool = False) -> PolicyReport:
    report = PolicyReport()
    gateway.check_ready()
    _ensure_policies(config, gateway, report, dry_run)
    accessor = _ensure_approle_mount(config, gateway, report, dry_run)
    token_accessor = _token_accessor(gateway)
    _prune_removed_nodes(config, gateway, report, dry_run, accessor, token_accessor)
    for node in config.nodes:
        _ensure_node(config, node, gateway, report, dry_run, accessor, token_accessor)
    _ensure_params(gateway, f"auth/{naming.approle_mount(config)}/role/{naming.CSR_SIGNER_APPROLE_ROLE}",
                   machine_auth.signer_approle_params(config), report, dry_run, "write-approle", accessor is not None)
    _ensure_signer_jwt(config, gateway, report, dry_run)
    return report


def _ensure_signer_jwt(config: ClusterConfig, gateway: VaultGateway, report: PolicyReport, dry_run: bool) -> None:
    """The signer's JWT login (ops/signer_auth.py): the mount, role csr-signer, config = sa.pub's keys."""
    mounted = signer_auth.ensure_mount(config, gateway, report.actions, dry_run)
    mount = naming.jwt_mount(config)
    _ensure_params(gateway, f"auth/{mount}/role/{naming.CSR_SIGNER_JWT_ROLE}",
                   machine_auth.signer_jwt_role_params(config), report, dry_run, "write-jwt-role", mounted)
    keys, note = sa_ops.readable_key_set(gateway, config.service_account)
    if keys is None:
        report.notes.append(note)
    elif not mounted:  # a dry run before the mount exists
        report.actions.append(Action("write-jwt-config", f"auth/{mount}/config", "missing"))
    else:
        report.actions.extend(signer_auth.sync_keys(config, gateway, keys, dry_run))


def _ensure_policies(config: ClusterConfig, gateway: VaultGateway, report: PolicyReport, dry_run: bool) -> None:
    for kind in grants.policy_kinds():
        name = naming.policy_name(config, kind)
        want = hcl.render_policy(kind, config)
        have = gateway.read_policy(name)
        if have is not None and have.strip() == want.strip():
            continue
        report.actions.append(Action("write-policy", name, "missing" if have is None else "differs from policies/"))
        report.diffs.append("".join(difflib.unified_diff(
            (have or "").splitlines(True), want.splitlines(True), f"vault:{name}", f"policies/{kind}.hcl")))
        if not dry_run:
            gateway.write_policy(name, want)


def _ensure_approle_mount(config: ClusterConfig, gateway: VaultGateway, report: PolicyReport,
                          dry_run: bool) -> str | None:
    mount = naming.approle_mount(config)
    found = gateway.auth_accessor(mount)
    if found is not None:
        if found[0] != "approle":
            raise PlanRefused(f"auth/{mount} is already a {found[0]!r} auth method, not AppRole: "
                              "choose another vault.mount_prefix")
        return found[1]
    report.actions.append(Action("enable-auth", f"auth/{mount}", "AppRole mount for this cluster's nodes"))
    if dry_run:
        return None
    gateway.enable_auth("approle", mount, f"vaultk8s {config.name}: node machine credentials")
    return gateway.auth_accessor(mount)[1]


def _token_accessor(gateway: VaultGateway) -> str:
    found = gateway.auth_accessor(TOKEN_AUTH)
    if found is None:  # pragma: no cover - Vault always mounts token/
        raise VaultError("Vault has no token auth method mounted")
    return found[1]


_DELETE_KINDS = {prune.APPROLE_ROLE: "delete-approle", prune.TOKEN_ROLE: "delete-token-role",
                 prune.ENTITY: "delete-entity"}
_DELETE_WHY = {prune.APPROLE_ROLE: "its secret_ids stop logging in",
               prune.TOKEN_ROLE: "no new plain tokens",
               prune.ENTITY: "its live tokens stop resolving node paths"}


def observe_prune(config: ClusterConfig, gateway: VaultGateway, approle_accessor: str | None,
                  token_accessor: str | None) -> prune.PrunePlan:
    """Read what removed nodes left behind (names listed, candidates read) and plan the deletions."""
    mount = naming.approle_mount(config)
    roles = gateway.list_approle_roles(mount) if approle_accessor is not None else []
    observed = prune.Observed(
        approle_roles={n: gateway.read_approle_role(mount, n) for n in prune.candidate_approle_roles(config, roles)},
        token_roles={n: gateway.read_token_role(n)
                     for n in prune.candidate_entity_names(config, gateway.list_token_roles())},
        entities={n: gateway.read_entity(n) for n in prune.candidate_entity_names(config, gateway.list_entity_names())},
        approle_accessor=approle_accessor, token_accessor=token_accessor,
    )
    return prune.plan_prune(config, observed)


def _prune_removed_nodes(config: ClusterConfig, gateway: VaultGateway, report: PolicyReport, dry_run: bool,
                         approle_accessor: str | None, token_accessor: str) -> None:
    plan = observe_prune(config, gateway, approle_accessor, token_accessor)
    for kept in plan.skipped:
        report.notes.append(f"kept {kept.path}: named like a removed node's {kept.kind}, but {kept.reason}")
    for item in plan.stale:
        report.actions.append(Action(_DELETE_KINDS[item.kind], item.path,
                                     f"node {item.node} is not in the cluster file: {_DELETE_WHY[item.kind]}"))
        if dry_run:
            continue
        if item.kind == prune.APPROLE_ROLE:
            gateway.delete_approle_role(naming.approle_mount(config), naming.approle_role(item.node))
        elif item.kind == prune.TOKEN_ROLE:
            gateway.delete_token_role(naming.entity_name(config, item.node))
        else:
            gateway.delete_entity(naming.entity_name(config, item.node))


def _ensure_node(config: ClusterConfig, node: NodeSpec, gateway: VaultGateway, report: PolicyReport,
                 dry_run: bool, accessor: str | None, token_accessor: str) -> None:
    am, role = naming.approle_mount(config), naming.approle_role(node.name)
    _ensure_params(gateway, f"auth/{am}/role/{role}", machine_auth.approle_params(config, node), report, dry_run,
                   "write-approle", accessor is not None)
    token_role = naming.entity_name(config, node.name)
    _ensure_params(gateway, f"auth/token/roles/{token_role}", machine_auth.token_role_params(config, node), report,
                   dry_run, "write-token-role", True)
    name = naming.entity_name(config, node.name)
    entity = gateway.read_entity(name)
    metadata = machine_auth.entity_metadata(config, node)
    if entity is None or (entity.get("metadata") or {}) != metadata or entity.get("disabled"):
        report.actions.append(Action("write-entity", name, f"identity with metadata node={node.name}"))
        if not dry_run:
            gateway.write_entity(name, metadata)
            entity = gateway.read_entity(name)
    aliases = {(a.get("mount_accessor"), a.get("name")) for a in ((entity or {}).get("aliases") or [])}
    if (token_accessor, name) not in aliases:
        _alias_action(report, dry_run, gateway, entity, token_accessor, name, f"plain token files of node {node.name}")
    if dry_run:
        # diff runs with an auditor token, which may not read role_ids: any alias on the mount counts
        if accessor is None or not any(acc == accessor for acc, _ in aliases):
            report.actions.append(Action("write-alias", f"{name}/role_id", f"binds AppRole login to node {node.name}"))
        return
    role_id = gateway.role_id(am, role)
    if (accessor, role_id) not in aliases:
        _alias_action(report, dry_run, gateway, entity, accessor, role_id, f"AppRole login of node {node.name}")


def _alias_action(report: PolicyReport, dry_run: bool, gateway: VaultGateway, entity: dict | None,
                  mount_accessor: str, alias: str, why: str) -> None:
    report.actions.append(Action("write-alias", f"{(entity or {}).get('name', '?')}/{alias}", f"binds {why}"))
    if not dry_run:
        gateway.create_entity_alias(entity["id"], mount_accessor, alias)


def _ensure_params(gateway: VaultGateway, path: str, want: dict[str, Any], report: PolicyReport,
                   dry_run: bool, kind: str, can_read: bool) -> None:
    have = gateway.read(path) if can_read else None
    observed = (have or {}).get("data")
    if observed is not None:  # Vault leaves empty lists out of some reads
        observed = {**{k: [] for k, v in want.items() if isinstance(v, list)}, **observed}
    drift = role_drift(want, observed)
    if not drift:
        return
    report.actions.append(Action(kind, path, "missing" if have is None else "differs in " + ", ".join(drift)))
    if not dry_run:
        gateway.write(path, want)


# --- review ---------------------------------------------------------------------------------------

def review_offline(config: ClusterConfig, directory: Path | None) -> Review:
    """Lint policies/ (or the rendering) against the desired roles: what a PR would apply."""
    texts = read_dir(directory) if directory else {k: hcl.render_policy(k, config) for k in grants.policy_kinds()}
    roles = {(r.mount, r.name): r.params for r in resolve_roles(resolve_all(config))}
    return review(config, texts, roles)


def review_vault(config: ClusterConfig, gateway: VaultGateway) -> Review:
    """Lint what is in effect: the policies and every role on the cluster's CA mounts as Vault has them."""
    gateway.check_ready()
    texts = {kind: gateway.read_policy(naming.policy_name(config, kind)) for kind in grants.policy_kinds()}
    roles: dict[tuple[str, str], dict[str, Any]] = {}
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        for name in gateway.list_roles(mount):
            roles[(mount, name)] = gateway.read_role(mount, name) or {}
    found = gateway.auth_accessor(naming.approle_mount(config))
    approle_accessor = found[1] if found is not None and found[0] == "approle" else None
    leftovers = observe_prune(config, gateway, approle_accessor, _token_accessor(gateway))
    return review(config, texts, roles, leftovers)
