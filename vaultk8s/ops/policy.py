"""`vaultk8s policy render|apply|diff|review`: policies/ on disk, policies and auth roles in Vault.

apply writes, in order: the ACL policies, the cluster's AppRole and cert auth mounts, then deletes
the AppRole role, cert entry, token role and identity entity of every node no longer in the cluster
file (plan/prune.py decides which objects are this cluster's), then per node an AppRole role, a
token role, a cert entry (its kubelet-client certificate logs in, ops/cert_auth.py), and an identity
entity (metadata node=<name>) with three aliases (the AppRole role_id, the token role's alias name,
the certificate's CN on the cert mount), and the CSR signer's AppRole role (no entity: its policy
names every node), and its
JWT mount, role and keys (ops/signer_auth.py). A node `node revoke` revoked keeps only its AppRole and token roles (no entity,
no cert entry) until `--readmit`. Every step is observed first; re-running changes nothing. Writing policies and
identities needs an admin token (see docs/policies.md).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TYPE_CHECKING

from vaultk8s import catalog, crypto
from vaultk8s.config import ClusterConfig, NodeSpec
from vaultk8s.errors import StoreError, VaultError
from vaultk8s.ops.auth_mounts import ensure_auth_mount
from vaultk8s.ops.cert_auth import login_trust, placeholder_trust
from vaultk8s.ops import sa as sa_ops
from vaultk8s.ops import signer_auth
from vaultk8s.plan import grants, hcl, machine_auth, naming, prune
from vaultk8s.plan.actions import Action, ActionReport
from vaultk8s.plan.review import Review, review
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.plan.roles import resolve_roles, role_drift
from vaultk8s.store.atomic import public, read_file, write_file

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
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

@dataclass(frozen=True)
class Accessors:
    """The cluster's auth mounts as found (None: not mounted yet, only in a dry run)."""

    approle: str | None
    cert: str | None
    token: str

    def ours(self) -> set[str]:
        return {a for a in (self.approle, self.cert, self.token) if a}


def apply(config: ClusterConfig, gateway: VaultGateway, *, dry_run: bool = False,
          readmit: tuple[str, ...] = (), now: datetime | None = None) -> PolicyReport:
    """readmit: revoked nodes to admit again (each gets a new identity: see revoke_marker)."""
    for name in readmit:
        config.node(name)  # validate before writing
    report = PolicyReport()
    gateway.check_ready()
    _ensure_policies(config, gateway, report, dry_run)
    accessors = Accessors(
        ensure_auth_mount(config, gateway, report.actions, dry_run, "approle", naming.approle_mount(config),
                          "AppRole mount for this cluster's nodes", "node machine credentials"),
        ensure_auth_mount(config, gateway, report.actions, dry_run, "cert", naming.cert_mount(config),
                          "cert mount for this cluster's nodes' certificate logins", "node certificate logins"),
        _token_accessor(gateway))
    _prune_removed_nodes(config, gateway, report, dry_run, accessors)
    trust = login_trust(config, gateway)
    for node in config.nodes:
        _ensure_node(config, node, gateway, report, dry_run, accessors,
                     _NodeIdentity(trust, node.name in readmit, now or datetime.now(timezone.utc)))
    _ensure_params(gateway, f"auth/{naming.approle_mount(config)}/role/{naming.CSR_SIGNER_APPROLE_ROLE}",
                   machine_auth.signer_approle_params(config), report, dry_run, "write-approle",
                   accessors.approle is not None)
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
        report.actions.extend(signer_auth.sync_keys(config, gateway, keys, dry_run, just_enabled=True))


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


def _accessor_of(gateway: VaultGateway, mount: str, method: str) -> str | None:
    found = gateway.auth_accessor(mount)
    return found[1] if found is not None and found[0] == method else None


def _token_accessor(gateway: VaultGateway) -> str:
    found = gateway.auth_accessor(TOKEN_AUTH)
    if found is None:  # pragma: no cover - Vault always mounts token/
        raise VaultError("Vault has no token auth method mounted")
    return found[1]


_DELETE_KINDS = {prune.APPROLE_ROLE: "delete-approle", prune.CERT_ENTRY: "delete-cert-entry",
                 prune.TOKEN_ROLE: "delete-token-role", prune.ENTITY: "delete-entity"}
_DELETE_WHY = {prune.APPROLE_ROLE: "its secret_ids stop logging in",
               prune.CERT_ENTRY: "its certificate stops logging in",
               prune.TOKEN_ROLE: "no new plain tokens",
               prune.ENTITY: "its live tokens stop resolving node paths"}


def observe_prune(config: ClusterConfig, gateway: VaultGateway, accessors: Accessors) -> prune.PrunePlan:
    """Read what removed nodes left behind (names listed, candidates read) and plan the deletions."""
    mount, cm = naming.approle_mount(config), naming.cert_mount(config)
    roles = gateway.list_approle_roles(mount) if accessors.approle is not None else []
    entries = gateway.list_cert_entries(cm) if accessors.cert is not None else []
    observed = prune.Observed(
        approle_roles={n: gateway.read_approle_role(mount, n) for n in prune.candidate_approle_roles(config, roles)},
        cert_entries={n: gateway.read_cert_entry(cm, n) for n in prune.candidate_cert_entries(config, entries)},
        token_roles={n: gateway.read_token_role(n)
                     for n in prune.candidate_entity_names(config, gateway.list_token_roles())},
        entities={n: gateway.read_entity(n) for n in prune.candidate_entity_names(config, gateway.list_entity_names())},
        approle_accessor=accessors.approle, cert_accessor=accessors.cert, token_accessor=accessors.token,
    )
    return prune.plan_prune(config, observed)


def _prune_removed_nodes(config: ClusterConfig, gateway: VaultGateway, report: PolicyReport, dry_run: bool,
                         accessors: Accessors) -> None:
    plan = observe_prune(config, gateway, accessors)
    for kept in plan.skipped:
        report.notes.append(f"kept {kept.path}: named like a removed node's {kept.kind}, but {kept.reason}")
    for item in plan.stale:
        report.actions.append(Action(_DELETE_KINDS[item.kind], item.path,
                                     f"node {item.node} is not in the cluster file: {_DELETE_WHY[item.kind]}"))
        if dry_run:
            continue
        if item.kind == prune.APPROLE_ROLE:
            gateway.delete_approle_role(naming.approle_mount(config), naming.approle_role(item.node))
        elif item.kind == prune.CERT_ENTRY:
            gateway.delete_cert_entry(naming.cert_mount(config), naming.cert_entry(item.node))
        elif item.kind == prune.TOKEN_ROLE:
            gateway.delete_token_role(naming.entity_name(config, item.node))
        else:
            gateway.delete_entity(naming.entity_name(config, item.node))


@dataclass(frozen=True)
class _NodeIdentity:  # what _ensure_node needs beyond the node itself
    trust: str | None  # the kubernetes-ca bundle the node's cert entry trusts (None: no CA yet)
    readmit: bool  # --readmit: a revoked node gets a new identity
    now: datetime


def _ensure_node(config: ClusterConfig, node: NodeSpec, gateway: VaultGateway, report: PolicyReport,
                 dry_run: bool, accessors: Accessors, ident: _NodeIdentity) -> None:
    am, role = naming.approle_mount(config), naming.approle_role(node.name)
    _ensure_params(gateway, f"auth/{am}/role/{role}", machine_auth.approle_params(config, node), report, dry_run,
                   "write-approle", accessors.approle is not None)
    token_role = naming.entity_name(config, node.name)
    _ensure_params(gateway, f"auth/token/roles/{token_role}", machine_auth.token_role_params(config, node), report,
                   dry_run, "write-token-role", True)
    name = naming.entity_name(config, node.name)
    entity = gateway.read_entity(name)
    when = revoked_at(entity)
    if when and not ident.readmit:
        _keep_revoked(config, node, gateway, report, dry_run, accessors, when)
        return
    if when:
        _readmit(node, gateway, report, dry_run, name)
        entity = None
    entity = _ensure_entity(config, node, gateway, report, dry_run, name, entity)
    _ensure_aliases(node, gateway, report, dry_run, accessors, name, entity, (am, role))
    # after the aliases: a login before them would make Vault invent a metadata-less entity for the CN
    _ensure_cert_entry(config, node, gateway, report, dry_run, accessors, ident)


def _ensure_entity(config: ClusterConfig, node: NodeSpec, gateway: VaultGateway, report: PolicyReport,
                   dry_run: bool, name: str, entity: dict | None) -> dict | None:
    metadata = machine_auth.entity_metadata(config, node)
    if entity is not None and (entity.get("metadata") or {}) == metadata and not entity.get("disabled"):
        return entity
    report.actions.append(Action("write-entity", name, f"identity with metadata node={node.name}"))
    if dry_run:
        return entity
    gateway.write_entity(name, metadata)
    return gateway.read_entity(name)


def _ensure_aliases(node: NodeSpec, gateway: VaultGateway, report: PolicyReport, dry_run: bool, accessors: Accessors,
                    name: str, entity: dict | None, approle: tuple[str, str]) -> None:
    """The entity's aliases: the token role's name, the certificate's CN, the AppRole role_id."""
    aliases = {(a.get("mount_accessor"), a.get("name")) for a in ((entity or {}).get("aliases") or [])}
    if (accessors.token, name) not in aliases:
        _alias_action(report, dry_run, gateway, entity, accessors.token, name, f"plain token files of node {node.name}")
    cert_alias = naming.cert_alias(node.name)
    if accessors.cert is None or (accessors.cert, cert_alias) not in aliases:
        _alias_action(report, dry_run, gateway, entity, accessors.cert, cert_alias,
                      f"certificate login of node {node.name}")
    if dry_run:
        # diff runs with an auditor token, which may not read role_ids: any alias on the mount counts
        if accessors.approle is None or not any(acc == accessors.approle for acc, _ in aliases):
            report.actions.append(Action("write-alias", f"{name}/role_id", f"binds AppRole login to node {node.name}"))
        return
    role_id = gateway.role_id(*approle)
    if (accessors.approle, role_id) not in aliases:
        _alias_action(report, dry_run, gateway, entity, accessors.approle, role_id, f"AppRole login of node {node.name}")


def _ensure_cert_entry(config: ClusterConfig, node: NodeSpec, gateway: VaultGateway, report: PolicyReport,
                       dry_run: bool, accessors: Accessors, ident: _NodeIdentity) -> None:
    """The node's certificate login. Before kubernetes-ca exists an entry keeps the trust it has (or
    gets one nothing chains to); bootstrap sets the real bundle (ops/cert_auth.py)."""
    cm, entry = naming.cert_mount(config), naming.cert_entry(node.name)
    have = gateway.read_cert_entry(cm, entry) if accessors.cert is not None else None
    found = (have or {}).get("certificate")
    trust = ident.trust or found or placeholder_trust(ident.now)
    if found and crypto.same_certificates(found, trust):
        trust = found  # the same certificates, as Vault keeps them
    _ensure_params(gateway, f"auth/{cm}/certs/{entry}", machine_auth.cert_entry_params(config, node, trust), report,
                   dry_run, "write-cert-entry", accessors.cert is not None)


def revoked_at(entity: dict | None) -> str | None:
    """When `node revoke` revoked the node whose entity this is (its marker), or None."""
    return ((entity or {}).get("metadata") or {}).get(naming.REVOKED_METADATA_KEY) or None


def _readmit(node: NodeSpec, gateway: VaultGateway, report: PolicyReport, dry_run: bool, name: str) -> None:
    """--readmit: the revoked marker goes; the node then gets a new entity (never the old one back)."""
    report.actions.append(Action("delete-entity", name, f"--readmit {node.name}: a new identity replaces the "
                                 "revoked one"))
    if not dry_run:
        gateway.delete_entity(name)


def _keep_revoked(config: ClusterConfig, node: NodeSpec, gateway: VaultGateway, report: PolicyReport,
                  dry_run: bool, accessors: Accessors, when: str) -> None:
    """A revoked node stays out: no certificate entry, no identity, until `policy apply --readmit`."""
    report.notes.append(f"node {node.name} was revoked at {when}: kept out (no certificate login, no identity); "
                        f"`vaultk8s policy apply --readmit {node.name}` admits it again")
    cm, entry = naming.cert_mount(config), naming.cert_entry(node.name)
    if accessors.cert is not None and gateway.read_cert_entry(cm, entry) is not None:
        report.actions.append(Action("delete-cert-entry", f"auth/{cm}/certs/{entry}", f"node {node.name} is revoked"))
        if not dry_run:
            gateway.delete_cert_entry(cm, entry)


def _alias_action(report: PolicyReport, dry_run: bool, gateway: VaultGateway, entity: dict | None,
                  mount_accessor: str | None, alias: str, why: str) -> None:
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
    leftovers = observe_prune(config, gateway, Accessors(_accessor_of(gateway, naming.approle_mount(config), "approle"),
                                                         _accessor_of(gateway, naming.cert_mount(config), "cert"),
                                                         _token_accessor(gateway)))
    return review(config, texts, roles, leftovers)
