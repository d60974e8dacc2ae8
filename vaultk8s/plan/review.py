"""The effective-permission matrix and the lint a security reviewer signs off. Pure.

Input: policy texts (from policies/ or from Vault) and PKI role parameters (desired or as read
from Vault). Output: one row per (identity, role) it can sign with, and findings with severity.
High findings fail `vaultk8s policy review`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from vaultk8s import catalog
from vaultk8s.config import ClusterConfig
from vaultk8s.durations import hours_or_seconds, whole_seconds
from vaultk8s.plan.grants import AUDITOR, OPERATOR, Grant, grants_for, node_policy_kinds, policy_kinds
from vaultk8s.plan.hcl import parse_policy
from vaultk8s.plan.naming import NODE_TEMPLATE, approle_mount, policy_name
from vaultk8s.plan.prune import PrunePlan
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.plan.roles import resolve_roles

HIGH, MEDIUM, INFO = "high", "medium", "info"
_WRITE_CAPS = {"create", "update", "delete", "patch"}
_FORBIDDEN_SEGMENTS = {
    "sign-verbatim": "sign-verbatim copies the CSR's subject: a CSR with O=system:masters would pass",
    "sign-intermediate": "sign-intermediate mints a sub-CA that can sign anything",
    "sign-self-issued": "sign-self-issued signs arbitrary CA certificates",
    "revoke": "revoke lets a caller revoke other identities' certificates",
    "revoke-with-key": "revoke lets a caller revoke certificates",
    "tidy": "tidy changes the CA's storage",
    "root": "root endpoints create, replace or delete the CA",
    "intermediate": "intermediate endpoints replace the CA",
    "issuers": "issuer management can import or replace CAs",
    "keys": "key management can import or replace CA keys",
    "config": "config endpoints change the CA's behaviour",
}
_PRIVILEGED = (OPERATOR, AUDITOR)
_TEMPLATE = re.compile(r"\{\{([^}]*)\}\}")


@dataclass(frozen=True)
class Finding:
    severity: str
    identity: str
    subject: str
    message: str


@dataclass(frozen=True)
class MatrixRow:
    identity: str
    mount: str
    role: str
    common_name: str
    organization: str
    sans: str
    ekus: str
    max_ttl: str


@dataclass
class Review:
    rows: list[MatrixRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def high(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == HIGH]

    def to_dict(self) -> dict[str, Any]:
        return {"matrix": [asdict(r) for r in self.rows], "findings": [asdict(f) for f in self.findings],
                "high": len(self.high)}


def review(config: ClusterConfig, policy_texts: Mapping[str, str | None],
           roles: Mapping[tuple[str, str], dict[str, Any]], removed_nodes: PrunePlan | None = None) -> Review:
    """policy_texts: kind -> HCL (None when missing); roles: (mount, name) -> parameters;
    removed_nodes: machine credentials of nodes no longer in the cluster file, as found in Vault."""
    result = Review()
    mounts = {config.mount(ca.name) for ca in catalog.CAS}
    used: dict[tuple[str, str], set[str]] = {}
    for kind in policy_kinds():
        text = policy_texts.get(kind)
        if text is None:
            result.findings.append(Finding(MEDIUM, kind, policy_name(config, kind), "policy missing"))
            continue
        expected = {g.key for g in grants_for(kind, config)}
        grants, leftovers = parse_policy(text)
        for piece in leftovers:
            result.findings.append(Finding(HIGH, kind, piece, "policy text outside path/capabilities/allowed_parameters "
                                                              "blocks (denied_parameters, deny lists): review by hand"))
        for grant in grants:
            # The operator and auditor need sys/, roles and globs; exactly what is rendered is
            # reported as info with the reason, anything beyond it is linted like any policy.
            by_design = kind in _PRIVILEGED and grant.key in expected
            for severity, message in lint_grant(grant, config, mounts, kind):
                if by_design:
                    severity, message = INFO, f"{kind}, by design: {message}"
                result.findings.append(Finding(severity, kind, grant.path, message))
            if grant.allowed_parameters and grant.key not in expected:
                result.findings.append(Finding(HIGH, kind, grant.path, "parameter limits not generated from "
                                                                       "the catalog: review by hand"))
            elif kind != OPERATOR and grant.key not in expected:
                result.findings.append(Finding(MEDIUM, kind, grant.path, "not generated from the catalog"))
            if kind != OPERATOR:
                _collect_signing(grant, kind, config, mounts, used)
    _matrix(result, used, roles)
    _lint_overlap(result, config, used)
    _lint_role_collisions(result, config)
    _lint_roles(result, config, roles, used)
    _lint_removed_nodes(result, removed_nodes)
    result.findings.sort(key=lambda f: ({HIGH: 0, MEDIUM: 1, INFO: 2}[f.severity], f.identity, f.subject))
    return result


def lint_grant(grant: Grant, config: ClusterConfig, mounts: set[str], kind: str) -> list[tuple[str, str]]:
    """(severity, message) for one path block."""
    path, caps = grant.path, set(grant.capabilities)
    out: list[tuple[str, str]] = []
    if "sudo" in caps:
        out.append((HIGH, "grants sudo"))
    if path.startswith("sys/"):
        out.append((HIGH, "grants a sys/ path"))
    globs = [i for i in (path.find("*"), path.find("+")) if i >= 0]
    if globs:
        head = path[:min(globs)]
        inside = any(head.startswith(f"{m}/") for m in mounts) or head.startswith(f"auth/{approle_mount(config)}/")
        # Any glob in a signing identity's policy reaches roles it was never given (other nodes,
        # other components), so it is high even inside one mount.
        out.append((HIGH, "glob crosses CA mounts or leaves this cluster") if not inside
                   else (HIGH, "wildcard path: matches roles of other identities"))
    for match in _TEMPLATE.findall(path):
        if match.strip() != NODE_TEMPLATE.strip("{}"):
            out.append((HIGH, f"template {{{{{match}}}}} is not the node metadata vaultk8s sets"))
    segments = path.split("/")
    for mount in mounts:
        if path.startswith(f"{mount}/"):
            rest = path[len(mount) + 1:].split("/")
            out += _lint_pki_path(rest, caps)
    if path.startswith("auth/token/create") and "/" not in path[len("auth/token/create/"):] and kind != OPERATOR:
        out.append((HIGH, "can mint tokens"))
    if segments[0] == "identity" and caps & _WRITE_CAPS and kind != OPERATOR:
        out.append((HIGH, "can change identities (node metadata)"))
    return out


def _lint_pki_path(rest: list[str], caps: set[str]) -> list[tuple[str, str]]:
    head = rest[0]
    if head in _FORBIDDEN_SEGMENTS and (caps & _WRITE_CAPS or head.startswith("sign")):
        return [(HIGH, _FORBIDDEN_SEGMENTS[head])]
    if head == "roles" and caps & _WRITE_CAPS:
        return [(HIGH, "can write PKI roles (and so widen what any role signs)")]
    if head == "issue":
        return [(MEDIUM, "issue: Vault generates the private key and returns it; vaultk8s signs CSRs")]
    return []


def _collect_signing(grant: Grant, kind: str, config: ClusterConfig, mounts: set[str],
                     used: dict[tuple[str, str], set[str]]) -> None:
    """Expand node templates per node that carries this kind, recording (mount, role) -> identities."""
    for mount in mounts:
        prefix_sign, prefix_issue = f"{mount}/sign/", f"{mount}/issue/"
        for prefix in (prefix_sign, prefix_issue):
            if not grant.path.startswith(prefix) or not set(grant.capabilities) & {"create", "update"}:
                continue
            role = grant.path[len(prefix):]
            if NODE_TEMPLATE in role:
                for node in config.nodes:
                    if kind in node_policy_kinds(node):
                        used.setdefault((mount, role.replace(NODE_TEMPLATE, node.name)), set()).add(
                            f"{kind}@{node.name}")
            else:
                used.setdefault((mount, role), set()).add(kind)


def _matrix(result: Review, used: dict[tuple[str, str], set[str]], roles: Mapping) -> None:
    for (mount, role), identities in sorted(used.items()):
        params = roles.get((mount, role))
        for identity in sorted(identities):
            result.rows.append(_row(identity, mount, role, params))


def _row(identity: str, mount: str, role: str, params: dict[str, Any] | None) -> MatrixRow:
    if params is None:
        return MatrixRow(identity, mount, role, "(role missing)", "", "", "", "")
    domains = list(params.get("allowed_domains") or [])
    cn = domains[0] if domains else ""
    ips = list(params.get("allowed_ip_sans_cidr") or [])
    ekus = [e for e, flag in (("server", "server_flag"), ("client", "client_flag")) if params.get(flag)]
    return MatrixRow(identity, mount, role, cn, ",".join(params.get("organization") or []) or "-",
                     ",".join(domains[1:] + ips) or "-", "+".join(ekus) or "-",
                     hours_or_seconds(whole_seconds(params.get("max_ttl"))))


def _lint_overlap(result: Review, config: ClusterConfig, used: dict[tuple[str, str], set[str]]) -> None:
    # A signer acting for every node (csr-signer) shares the nodes' kubelet roles by design, and
    # only those: on any other role it counts like any identity.
    signer_paths = {i.name: {g.path for g in grants_for(i.name, config)}
                    for i in catalog.IDENTITIES if i.every_node}
    for (mount, role), identities in sorted(used.items()):
        kinds = {i.split("@")[0] for i in identities}
        by_design = {k for k in kinds if f"{mount}/sign/{role}" in signer_paths.get(k, ())}
        for kind in sorted(by_design):
            result.findings.append(Finding(INFO, kind, f"{mount}/sign/{role}", f"{kind}, by design: signs this "
                                           "node's CSRs once Kubernetes approved them (docs/signer.md)"))
        if len(kinds - by_design) > 1:
            result.findings.append(Finding(HIGH, ",".join(sorted(kinds)), f"{mount}/sign/{role}",
                                           "two identity kinds can obtain the same certificate"))


def _lint_role_collisions(result: Review, config: ClusterConfig) -> None:
    """A node name can make a per-node role equal a shared one (CP node `kubelet-client` ->
    `apiserver-kubelet-client`): that node would then hold another identity's role."""
    specs: dict[tuple[str, str], set[str]] = {}
    for rc in resolve_all(config):
        specs.setdefault((rc.mount, rc.role), set()).add(rc.spec.name)
    for (mount, role), names in sorted(specs.items()):
        if len(names) > 1:
            result.findings.append(Finding(HIGH, ",".join(sorted(names)), f"{mount}/roles/{role}",
                                           "two catalog certificates resolve to one role: rename the node"))


def _lint_roles(result: Review, config: ClusterConfig, roles: Mapping[tuple[str, str], dict[str, Any]],
                used: dict[tuple[str, str], set[str]]) -> None:
    desired = {(r.mount, r.name): r.params for r in resolve_roles(resolve_all(config))}
    bound = whole_seconds(config.policy.max_leaf_ttl)
    for key, params in sorted(roles.items()):
        subject = f"{key[0]}/roles/{key[1]}"
        for severity, message in lint_role(params, desired.get(key), bound):
            result.findings.append(Finding(severity, "-", subject, message))
        if key not in used:
            result.findings.append(Finding(MEDIUM, "-", subject, "no node or person policy can use this role "
                                                                 "(only the operator)"))


def _lint_removed_nodes(result: Review, plan: PrunePlan | None) -> None:
    if plan is None:
        return
    for item in plan.stale:
        result.findings.append(Finding(HIGH, f"node@{item.node}", item.path,
                                       f"{item.kind} of node {item.node}, which is not in the cluster file: its "
                                       "credential still works and a node re-added under that name inherits it; "
                                       "`vaultk8s policy apply` deletes it"))
    for kept in plan.skipped:
        result.findings.append(Finding(MEDIUM, "-", kept.path, f"named like a removed node's {kept.kind}, but "
                                                               f"{kept.reason}: not touched, review by hand"))


def lint_role(params: dict[str, Any], desired: dict[str, Any] | None, ttl_bound: int) -> list[tuple[str, str]]:
    out = []
    if params.get("allow_any_name"):
        out.append((HIGH, "allow_any_name: any CN is signed"))
    if "disabled" in (params.get("cn_validations") or []):
        out.append((HIGH, "cn_validations disabled: the CN check is off"))
    for flag in ("allow_glob_domains", "allow_subdomains", "allow_wildcard_certificates", "allowed_domains_template"):
        if params.get(flag):
            out.append((HIGH, f"{flag}: the role accepts more names than the catalog's"))
    if any("*" in str(d) for d in params.get("allowed_domains") or []):
        out.append((HIGH, "wildcard in allowed_domains"))
    if desired is None:
        out.append((MEDIUM, "role is not derived from the catalog and cluster file"))
    elif sorted(params.get("organization") or []) != sorted(desired.get("organization") or []):
        out.append((HIGH, "O not pinned to the catalog's organization"))
    max_ttl = whole_seconds(params.get("max_ttl"))
    if max_ttl > ttl_bound or max_ttl == 0:
        out.append((HIGH, f"max_ttl above the configured bound ({ttl_bound}s)"))
    return out
