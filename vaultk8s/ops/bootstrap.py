"""`vaultk8s bootstrap`: plan CA mounts, roles and leaves against what exists, then apply.

Order: validate and probe (no writes) -> CAs -> service-account key (KV) -> roles -> leaves issued
concurrently in memory -> each node's pki/ swapped atomically (sa.key/sa.pub included) ->
kubeconfigs. Re-running converges and changes nothing.

HSM mode (config.hsm set): the token is opened once for the CA phase, before any Vault write, so a
wrong PIN or a missing token fails with Vault untouched; roots stay in the token, each mount gets
an intermediate the token's root signed (docs/hsm.md).
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from cryptography import x509

from vaultk8s import catalog, crypto
from vaultk8s.crashpoint import crash_point
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import HsmError, VaultError, VaultK8sError
from vaultk8s.ops import sa as sa_ops
from vaultk8s.ops.kubeconfigs import ensure_kubeconfigs
from vaultk8s.ops.leaves import (CAState, IssuedLeaf, ca_bundle_changes, issue_leaf, leaf_changes, observe_leaf,
                                 read_ca_state)
from vaultk8s.plan.actions import Action
from vaultk8s.plan.cas import AUTO_TIDY, ObservedCA, intermediate_params, mount_ttl_seconds, plan_ca, root_params, url_params
from vaultk8s.plan.leaves import reissue_reason
from vaultk8s.plan.resolve import ResolvedCert, resolve_all
from vaultk8s.plan.roles import ResolvedRole, resolve_roles, role_drift
from vaultk8s.store.atomic import FileContent, check_writable, public, write_file
from vaultk8s.store.layout import RBAC_FILE, NodeOutput
from vaultk8s.vault.gateway import VaultGateway

Progress = Callable[[str, int], Callable[[], None]]  # (phase, total) -> advance()


@dataclass
class BootstrapReport:
    dry_run: bool
    actions: list[Action] = field(default_factory=list)
    kept: int = 0
    seconds: float = 0.0
    ca_fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.actions)

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run, "changed": self.changed, "kept": self.kept,
            "seconds": round(self.seconds, 3), "ca_fingerprints": self.ca_fingerprints,
            "actions": [a.to_dict() for a in self.actions],
        }


def _no_progress(phase: str, total: int) -> Callable[[], None]:
    return lambda: None


def bootstrap(config: ClusterConfig, out: Path, gateway: VaultGateway, *, now: datetime,
              dry_run: bool = False, force_renew: bool = False, workers: int = 8,
              progress: Progress = _no_progress) -> BootstrapReport:
    started = time.monotonic()
    report = BootstrapReport(dry_run=dry_run)
    if not dry_run:
        check_writable(Path(out))
    gateway.check_ready()
    crash_point("checked")
    cas = _ensure_cas(config, gateway, report, dry_run, now)
    crash_point("cas")
    sa_keys, sa_actions = sa_ops.ensure_key_set(config, gateway, now=now, dry_run=dry_run)
    crash_point("sa")
    report.actions.extend(sa_actions)
    certs = resolve_all(config)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        _ensure_roles(resolve_roles(certs), config, gateway, report, dry_run, pool, progress)
        crash_point("roles")
        plan = _plan_leaves(certs, out, cas, now, force_renew, report)
        if not dry_run:
            issued = _issue_all(plan, gateway, pool, progress)
            crash_point("issued")
        report.actions.extend(sa_ops.plan_key_files(config, out, sa_keys))
        if not dry_run:
            _write_nodes(config, out, cas, issued, sa_ops.key_files(sa_keys))
            crash_point("nodes")
    report.actions.extend(ensure_kubeconfigs(config, out, dry_run=dry_run))
    crash_point("kubeconfigs")
    if not dry_run:
        _write_rbac(Path(out))
    report.ca_fingerprints = {n: crypto.fingerprint(s.issuer) for n, s in cas.items() if s.issuer}
    report.seconds = time.monotonic() - started
    return report


# --- CAs ----------------------------------------------------------------------------------------

def _observe_ca(mount: str, gateway: VaultGateway, hsm_root_sha256: str | None = None) -> ObservedCA:
    kind = gateway.mount_type(mount)
    if kind != "pki":
        return ObservedCA(mount_type=kind)
    ca_pem = gateway.read_ca_pem(mount)
    chain = tuple(gateway.read_ca_chain_pem(mount)) if ca_pem else ()
    return ObservedCA(kind, ca_pem, gateway.mount_max_ttl(mount), gateway.read_urls(mount), chain, hsm_root_sha256,
                      gateway.read_auto_tidy(mount))


def _ensure_cas(config: ClusterConfig, gateway: VaultGateway, report: BootstrapReport, dry_run: bool,
                now: datetime) -> dict[str, CAState]:
    """Plan all three CAs first, so a refusal for one leaves the others untouched too."""
    with _root_authority(config) as authority:
        roots = _probe_roots(authority)
        plans = []
        for ca in catalog.CAS:
            observed = _observe_ca(config.mount(ca.name), gateway, roots.get(ca.name))
            plans.append((ca, plan_ca(ca, config, observed, gateway.addr)))
        for _, actions in plans:
            report.actions.extend(actions)
        if not dry_run:
            # Roots are made in the token before any Vault write: a token that cannot (mechanism,
            # key without cert) fails with every mount as it was.
            signer = _HsmSigner(authority, config, now) if authority else None
            for ca, actions in plans:
                if signer and any(a.kind == "hsm-intermediate" for a in actions):
                    signer.ensure_root(ca)
            for ca, actions in plans:
                for action in actions:
                    _apply_ca_action(action, ca, config, gateway, signer)
                    crash_point("ca-action")
    return {ca.name: read_ca_state(gateway, config.mount(ca.name)) for ca in catalog.CAS}


@contextlib.contextmanager
def _root_authority(config: ClusterConfig) -> Iterator[Any]:
    """One logged-in token session for the CA phase, or None without an hsm: block."""
    if config.hsm is None:
        yield None
        return
    from vaultk8s.hsm import HsmRootAuthority, open_token  # pkcs11 only when HSM mode is on

    with open_token(config.hsm) as session:
        yield HsmRootAuthority(session, config.hsm.key_type, scope=config.hsm_scope)


def _probe_roots(authority: Any) -> dict[str, str]:
    """The token's root fingerprints per CA, read-only; half-present roots are refused here so
    even --dry-run reports them."""
    if authority is None:
        return {}
    found = {}
    for entry in authority.status(tuple(ca.name for ca in catalog.CAS)):
        if entry.key_found and not entry.cert_found:
            raise HsmError(f"{entry.ca_name}: the token holds the root key but no root certificate; restore "
                           "the certificate (a new one would be a new root nothing trusts yet)")
        if entry.cert_found and not entry.key_found:
            raise HsmError(f"{entry.ca_name}: the token holds a root certificate but not its private key; "
                           "restore the key from the HSM backup")
        if entry.cert_found:
            found[entry.ca_name] = entry.sha256_fingerprint.replace(":", "")
    return found


class _HsmSigner:
    """Roots in the token and intermediates they sign, for one bootstrap run."""

    def __init__(self, authority: Any, config: ClusterConfig, now: datetime):
        self._authority, self._config, self._now = authority, config, now
        self._roots: dict[str, x509.Certificate] = {}

    def ensure_root(self, ca: catalog.CASpec) -> x509.Certificate:
        if ca.name not in self._roots:
            self._roots[ca.name] = self._authority.ensure_root(ca.name, ca.common_name, self._config.ca_ttl, self._now)
        return self._roots[ca.name]

    def sign(self, ca: catalog.CASpec, csr_pem: str) -> tuple[x509.Certificate, x509.Certificate]:
        """(intermediate, root) for a CSR made in the mount."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        intermediate = self._authority.sign_intermediate(ca.name, csr, self._config.ca_ttl, self._now)
        return intermediate, self.ensure_root(ca)


def _apply_ca_action(action: Action, ca: catalog.CASpec, config: ClusterConfig, gateway: VaultGateway,
                     signer: _HsmSigner | None = None) -> None:
    mount = action.target
    if action.kind == "enable-mount":
        gateway.enable_pki(mount, mount_ttl_seconds(config), f"vaultk8s {config.name}: {ca.description}")
    elif action.kind == "tune-mount":
        gateway.tune_max_ttl(mount, mount_ttl_seconds(config))
    elif action.kind == "generate-root":
        gateway.generate_root(mount, root_params(ca, config))
    elif action.kind == "hsm-intermediate":
        install_hsm_intermediate(ca, config, gateway, signer)
    elif action.kind == "configure-urls":
        gateway.write_urls(mount, url_params(mount, gateway.addr))
    elif action.kind == "configure-tidy":
        gateway.write_auto_tidy(mount, AUTO_TIDY)


def install_hsm_intermediate(ca: catalog.CASpec, config: ClusterConfig, gateway: VaultGateway,
                             signer: _HsmSigner) -> None:
    """CSR in the mount -> signed by the token's root -> installed with the root as chain.

    Any failure after the CSR removes what this call created (issuers, then the key), so no mount
    is left holding a key without a certificate.
    """
    mount = config.mount(ca.name)
    csr_pem, key_id = gateway.generate_intermediate_csr(mount, intermediate_params(ca, config))
    imported: dict[str, str] = {}
    try:
        intermediate, root = signer.sign(ca, csr_pem)
        imported = gateway.set_signed_intermediate(mount, (crypto.cert_pem(intermediate) + crypto.cert_pem(root)).decode())
        # Explicit, not left to import order: the keyless root must never be the default issuer.
        default = [issuer for issuer, key in imported.items() if key == key_id]
        if len(default) != 1:
            raise VaultError(f"{mount}: set-signed did not import exactly one issuer for the new key")
        gateway.set_default_issuer(mount, default[0])
    except BaseException:
        _remove_partial(gateway, mount, imported, key_id)
        raise


def _remove_partial(gateway: VaultGateway, mount: str, imported: dict[str, str], key_id: str) -> None:
    with contextlib.suppress(VaultError):  # the original error is the one to report
        for issuer in imported:
            gateway.delete_issuer(mount, issuer)
        gateway.delete_key(mount, key_id)


# --- roles --------------------------------------------------------------------------------------

def _ensure_roles(roles: tuple[ResolvedRole, ...], config: ClusterConfig, gateway: VaultGateway,
                  report: BootstrapReport, dry_run: bool, pool: ThreadPoolExecutor, progress: Progress) -> None:
    wanted = {(r.mount, r.name) for r in roles}
    for mount in {r.mount for r in roles}:
        if gateway.mount_type(mount) != "pki":
            continue
        for name in gateway.list_roles(mount):
            if (mount, name) not in wanted:
                # A removed node's role would still let its old credential obtain certificates.
                report.actions.append(Action("delete-role", f"{mount}/roles/{name}", "not in the catalog/cluster file"))
    advance = progress("roles", len(roles))

    def observe(role: ResolvedRole) -> Action | None:
        existing = gateway.read_role(role.mount, role.name) if _mount_exists(role.mount, report) else None
        drift = role_drift(role.params, existing)
        advance()
        if not drift:
            return None
        reason = "new role" if existing is None else "differs in " + ", ".join(drift)
        return Action("write-role", f"{role.mount}/roles/{role.name}", reason)

    planned = [a for a in pool.map(observe, roles) if a]
    report.actions.extend(planned)
    if dry_run:
        return
    by_target = {f"{r.mount}/roles/{r.name}": r for r in roles}
    for action in [a for a in report.actions if a.kind == "delete-role"]:
        mount, _, name = action.target.partition("/roles/")
        gateway.delete_role(mount, name)
    list(pool.map(lambda a: _write_role(gateway, by_target[a.target]), planned))


def _mount_exists(mount: str, report: BootstrapReport) -> bool:
    return not any(a.kind == "enable-mount" and a.target == mount for a in report.actions)


def _write_role(gateway: VaultGateway, role: ResolvedRole) -> None:
    gateway.write_role(role.mount, role.name, role.params)
    crash_point("role-written")


# --- leaves -------------------------------------------------------------------------------------

def _plan_leaves(certs: tuple[ResolvedCert, ...], out: Path, cas: dict[str, CAState], now: datetime,
                 force: bool, report: BootstrapReport) -> list[ResolvedCert]:
    todo = []
    for rc in certs:
        state = cas[rc.spec.ca]
        issuers = [state.issuer] if state.issuer else []
        reason = reissue_reason(rc, observe_leaf(NodeOutput(out, rc.node), rc), issuers, now, force)
        if reason is None:
            report.kept += 1
            continue
        report.actions.append(Action("issue", f"{rc.node}/pki/{rc.cert_file}", reason))
        todo.append(rc)
    return todo


def _issue_all(todo: list[ResolvedCert], gateway: VaultGateway, pool: ThreadPoolExecutor,
               progress: Progress) -> list[IssuedLeaf]:
    advance = progress("certificates", len(todo))

    def task(rc: ResolvedCert) -> IssuedLeaf:
        leaf = issue_leaf(gateway, rc)
        crash_point("leaf-issued")
        advance()
        return leaf

    futures = [pool.submit(task, rc) for rc in todo]
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    for future in pending:
        future.cancel()
    wait(pending)
    failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
    if failed:
        err = failed[0].exception()
        if isinstance(err, VaultK8sError):
            raise type(err)(f"{err} (stopped after the first failure; nothing was written)")
        raise err
    return [f.result() for f in futures]


# --- output -------------------------------------------------------------------------------------

def _write_nodes(config: ClusterConfig, out: Path, cas: dict[str, CAState], issued: list[IssuedLeaf],
                 control_plane_files: dict[str, FileContent]) -> None:
    by_node: dict[str, list[IssuedLeaf]] = {}
    for leaf in issued:
        by_node.setdefault(leaf.cert.node, []).append(leaf)
    for node in config.nodes:
        changes: dict[str, FileContent | None] = dict(ca_bundle_changes(node.control_plane, cas, config.mount))
        for leaf in by_node.get(node.name, []):
            changes.update(leaf_changes(leaf))
        if node.control_plane:
            changes.update(control_plane_files)
        NodeOutput(out, node.name).update_pki(changes)
        crash_point("node-written")


def render_rbac() -> bytes:
    docs = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": b.name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": b.cluster_role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": b.subject_kind, "name": b.subject_name}],
        }
        for b in catalog.CLUSTER_ROLE_BINDINGS
    ]
    header = "# ClusterRoleBindings the catalog's identities rely on; apply with admin.conf.\n"
    return (header + yaml.safe_dump_all(docs, sort_keys=False)).encode()


def _write_rbac(out: Path) -> None:
    write_file(out / RBAC_FILE, public(render_rbac()))
