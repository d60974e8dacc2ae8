"""`vaultk8s bootstrap`: plan CA mounts, roles and leaves against what exists, then apply.

Order: validate and probe (no writes) -> CAs (ops/cas.py; HSM mode: ops/hsm_ca.py) ->
service-account key (KV) -> plan roles (every role read, concurrently with checking every file on
disk; plan/role_diff.py decides) -> role writes and signs in one queue, each leaf signed as soon as
its own role is written, in memory -> each node's pki/ swapped atomically (sa.key/sa.pub included)
-> kubeconfigs -> rbac.yaml (plan/rbac.py). Re-running converges and changes nothing.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, TYPE_CHECKING

from vaultk8s import crypto
from vaultk8s.catalog import RBAC_FILE
from vaultk8s.crashpoint import crash_point
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import VaultK8sError
from vaultk8s.ops import sa as sa_ops
from vaultk8s.ops.cas import ensure_cas
from vaultk8s.ops.cert_auth import ensure_login_trust
from vaultk8s.ops.defaults import DEFAULT_WORKERS
from vaultk8s.ops.kubeconfigs import ensure_node_kubeconfigs
from vaultk8s.ops.leaves import (CAState, IssuedLeaf, ca_bundle_changes, issue_leaf, key_and_csr_args, leaf_changes,
                                 reissue_reasons)
from vaultk8s.plan.actions import Action, ActionReport
from vaultk8s.plan.rbac import render_rbac
from vaultk8s.plan.resolve import ResolvedCert, resolve_all
from vaultk8s.plan.role_diff import role_actions
from vaultk8s.plan.roles import ResolvedRole, resolve_roles
from vaultk8s.store.atomic import FileContent, check_writable, public, write_file
from vaultk8s.store.layout import NodeOutput
from vaultk8s.store.paced import PacedPool

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

Progress = Callable[[str, int], Callable[[], None]]  # (phase, total) -> advance()

# Most threads writing node directories and kubeconfigs; PacedPool times whether they beat one on
# this disk. On ext4, 1000 payloads took 5.8 s with 1 thread, 3.0-3.5 s with 4, 4.1 s with 8,
# 5.3 s with 16; on tmpfs one beat four (bench/README.md). Vault's concurrency does not apply.
FILE_WORKERS = 4


@dataclass
class BootstrapReport(ActionReport):
    dry_run: bool
    actions: list[Action] = field(default_factory=list)
    kept: int = 0
    seconds: float = 0.0
    ca_fingerprints: dict[str, str] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase, for bench/
    phase_cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process only: not RSA key processes
    file_threads: dict[str, list[int]] = field(default_factory=dict)  # PacedPool's choice per stretch of nodes

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started, cpu_started = time.monotonic(), time.process_time()
        try:
            yield
        finally:
            self.phase_seconds[name] = round(time.monotonic() - started, 3)
            self.phase_cpu_seconds[name] = round(time.process_time() - cpu_started, 3)

    def to_dict(self) -> dict:
        return {
            "dry_run": self.dry_run, "changed": self.changed, "kept": self.kept,
            "seconds": round(self.seconds, 3), "ca_fingerprints": self.ca_fingerprints,
            "phase_seconds": self.phase_seconds, "phase_cpu_seconds": self.phase_cpu_seconds,
            "file_threads": self.file_threads,
            "actions": [a.to_dict() for a in self.actions],
        }


def _no_progress(phase: str, total: int) -> Callable[[], None]:
    return lambda: None


def bootstrap(config: ClusterConfig, out: Path, gateway: VaultGateway, *, now: datetime,
              dry_run: bool = False, force_renew: bool = False, workers: int = DEFAULT_WORKERS,
              progress: Progress = _no_progress) -> BootstrapReport:
    started = time.monotonic()
    report = BootstrapReport(dry_run=dry_run)
    gateway.check_ready()
    if not dry_run:
        check_writable(Path(out))
    crash_point("checked")
    with report.phase("cas"):
        cas, ca_actions = ensure_cas(config, gateway, now=now, dry_run=dry_run)
        report.actions.extend(ca_actions)
        # before any leaf: a node whose leaves a new root signs can still log in with them
        report.actions.extend(ensure_login_trust(config, gateway, dry_run=dry_run))
        crash_point("cas")
        sa_keys, sa_actions = sa_ops.ensure_key_set(config, gateway, now=now, dry_run=dry_run)
        crash_point("sa")
        report.actions.extend(sa_actions)
    certs = resolve_all(config)
    with ThreadPoolExecutor(max_workers=workers) as pool, PacedPool(FILE_WORKERS) as files:
        # Roles are read in the pool while the files on disk are checked (in the checker process
        # on a large re-run, else on this thread); the report keeps the order roles-then-leaves.
        with report.phase("plan"), _processes(_worth_a_check_process(certs, out), 1) as checker:
            leaf_reasons = _start_leaf_checks(certs, out, cas, now, force_renew, checker)
            roles = resolve_roles(certs)
            role_plan = _start_role_plan(roles, gateway, report, pool, progress)
            leaf_actions, todo = _leaf_plan(certs, leaf_reasons(), report)
            report.actions.extend(role_plan())
            report.actions.extend(leaf_actions)
        crash_point("roles")
        if not dry_run:
            with report.phase("roles+signs"):
                issued = _apply_roles_and_leaves(roles, todo, report, gateway, pool, workers, progress)
            crash_point("issued")
        report.actions.extend(sa_ops.plan_key_files(config, out, sa_keys))
        if not dry_run:
            with report.phase("node files"):
                _write_nodes(config, out, cas, issued, sa_ops.key_files(sa_keys), files)
                report.file_threads["node files"] = files.last_threads
            crash_point("nodes")
        with report.phase("kubeconfigs"):
            report.actions.extend(_ensure_kubeconfigs(config, out, dry_run, files))
            report.file_threads["kubeconfigs"] = files.last_threads
    crash_point("kubeconfigs")
    if not dry_run:
        _write_rbac(Path(out))
    report.ca_fingerprints = {n: crypto.fingerprint(s.issuer) for n, s in cas.items() if s.issuer}
    report.seconds = time.monotonic() - started
    return report


# --- roles --------------------------------------------------------------------------------------

def _start_role_plan(roles: tuple[ResolvedRole, ...], gateway: VaultGateway, report: BootstrapReport,
                     pool: ThreadPoolExecutor, progress: Progress) -> Callable[[], list[Action]]:
    """Every role is read in the pool, queued now; the returned call waits for the reads and returns
    plan/role_diff.py's actions. A role in a mount this run enables is not read: it cannot exist."""
    listed = {mount: gateway.list_roles(mount) for mount in dict.fromkeys(r.mount for r in roles)
              if gateway.mount_type(mount) == "pki"}
    new_mounts = {a.target for a in report.actions if a.kind == "enable-mount"}
    advance = progress("roles", len(roles))

    def read(role: ResolvedRole) -> dict[str, Any] | None:
        existing = None if role.mount in new_mounts else gateway.read_role(role.mount, role.name)
        advance()
        return existing

    reads = pool.map(read, roles)  # submits every read at once
    return lambda: role_actions(roles, listed, dict(zip([(r.mount, r.name) for r in roles], reads)))


def _write_role(gateway: VaultGateway, role: ResolvedRole) -> None:
    gateway.write_role(role.mount, role.name, role.params)
    crash_point("role-written")


# --- leaves -------------------------------------------------------------------------------------

def _start_leaf_checks(certs: tuple[ResolvedCert, ...], out: Path, cas: dict[str, CAState], now: datetime,
                       force: bool, checker: ProcessPoolExecutor | None) -> Callable[[], list[str | None]]:
    """Each leaf's reissue reason; the returned call waits for them. In the checker process when
    given: the checks (key match, signature) are CPU that would share this process's GIL with the
    role reads, which take all of it on a re-run (bench/README.md, seventh pass)."""
    issuer_pems = {name: crypto.cert_pem(state.issuer) if state.issuer else None for name, state in cas.items()}
    args = (out, certs, issuer_pems, now, force)
    if checker is None:
        return lambda: reissue_reasons(*args)
    checked = checker.submit(reissue_reasons, *args)

    def reasons() -> list[str | None]:
        try:
            return checked.result()
        except BrokenProcessPool:  # e.g. embedded in a script whose __main__ spawn cannot re-import
            return reissue_reasons(*args)
    return reasons


def _worth_a_check_process(certs: tuple[ResolvedCert, ...], out: Path) -> bool:
    """Enough leaves, and a tree to check them in: on a first run they are all missing, found at once."""
    return len(certs) >= _MIN_CERTS_FOR_CHECK_PROCESS and NodeOutput(out, certs[-1].node).root.is_dir()


def _leaf_plan(certs: tuple[ResolvedCert, ...], reasons: list[str | None],
               report: BootstrapReport) -> tuple[list[Action], list[ResolvedCert]]:
    actions, todo = [], []
    for rc, reason in zip(certs, reasons, strict=True):
        if reason is None:
            report.kept += 1
            continue
        actions.append(Action("issue", f"{rc.node}/pki/{rc.cert_file}", reason))
        todo.append(rc)
    return actions, todo


def _apply_roles_and_leaves(roles: tuple[ResolvedRole, ...], todo: list[ResolvedCert], report: BootstrapReport,
                            gateway: VaultGateway, pool: ThreadPoolExecutor, workers: int,
                            progress: Progress) -> list[IssuedLeaf]:
    """Deletes, then role writes and signs in one queue: a leaf's sign starts as soon as its own role
    is written, not after all roles. Each role write is queued a few pool rounds ahead of the first
    sign that needs it, so that sign rarely waits, and never for a write still behind it."""
    for action in [a for a in report.actions if a.kind == "delete-role"]:
        mount, _, name = action.target.partition("/roles/")
        gateway.delete_role(mount, name)
    to_write = {a.target for a in report.actions if a.kind == "write-role"}
    pending = {(r.mount, r.name): r for r in roles if f"{r.mount}/roles/{r.name}" in to_write}
    writes: dict[tuple[str, str], Future] = {}
    advance = progress("certificates", len(todo))

    def sign(rc: ResolvedCert, role_written: Future | None, made: Future | None) -> IssuedLeaf:
        if role_written is not None:
            role_written.result()  # re-raises the role write's error
        try:
            key_and_csr = made.result() if made else None
        except BrokenProcessPool:  # e.g. embedded in a script whose __main__ spawn cannot re-import
            key_and_csr = None  # made inline instead
        leaf = issue_leaf(gateway, rc, key_and_csr)
        crash_point("leaf-issued")
        advance()
        return leaf

    # Role writes in the order the leaves first need them, then those whose leaves are all kept.
    order = list(dict.fromkeys([(rc.mount, rc.role) for rc in todo if (rc.mount, rc.role) in pending]
                               + list(pending)))
    lead = 2 * workers
    with _key_processes(todo) as keygen:
        made = [keygen.submit(crypto.new_key_and_csr, *key_and_csr_args(rc)) if keygen else None for rc in todo]

        def write_up_to(n: int) -> None:
            while len(writes) < min(n, len(order)):
                key = order[len(writes)]
                writes[key] = pool.submit(_write_role, gateway, pending[key])

        position = {key: i for i, key in enumerate(order)}
        needed, signs = 0, []
        for rc, key_future in zip(todo, made):
            key = (rc.mount, rc.role)
            needed = max(needed, position.get(key, -1) + 1)
            write_up_to(needed + lead)
            signs.append(pool.submit(sign, rc, writes.get(key), key_future))
        write_up_to(len(order))
        _wait_all(list(writes.values()) + signs, [f for f in made if f])
    return [f.result() for f in signs]


def _key_processes(todo: list[ResolvedCert]) -> contextlib.AbstractContextManager[ProcessPoolExecutor | None]:
    """RSA keys are made in one process per core: cryptography holds the GIL while generating one
    (~70 ms for 2048 bits), so threads would use a single core. EC keys take ~0.1 ms: made inline."""
    return _processes(sum(rc.key_type.startswith("rsa-") for rc in todo) >= _MIN_RSA_FOR_PROCESSES)


@contextlib.contextmanager
def _processes(worth_it: bool, count: int | None = None) -> Iterator[ProcessPoolExecutor | None]:
    """count processes (default: one per core), or None on one core or when not worth_it."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores < 2 or not worth_it:
        yield None
        return
    # spawn, not fork: this process already runs threads (pool, progress bars).
    with ProcessPoolExecutor(max_workers=count or cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            yield pool
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


_MIN_RSA_FOR_PROCESSES = 8  # below this, starting the processes costs more than it saves
_MIN_CERTS_FOR_CHECK_PROCESS = 1000  # ~0.4 ms each inline; starting the process costs ~0.3 s of a core


def _wait_all(futures: list[Future], feeding: list[Future] = ()) -> None:
    """Wait for every task; on the first failure cancel what has not started and raise it. A failed
    feeding task (a key) fails the task that waits for it."""
    done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    for future in [*pending, *feeding]:
        future.cancel()
    wait(pending)
    failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
    if failed:
        err = failed[0].exception()
        if isinstance(err, VaultK8sError):
            raise type(err)(f"{err} (stopped after the first failure; nothing was written)")
        raise err


# --- output -------------------------------------------------------------------------------------

def _write_nodes(config: ClusterConfig, out: Path, cas: dict[str, CAState], issued: list[IssuedLeaf],
                 control_plane_files: dict[str, FileContent], files: PacedPool) -> None:
    """Nodes are independent directories, written by up to FILE_WORKERS threads."""
    by_node: dict[str, list[IssuedLeaf]] = {}
    for leaf in issued:
        by_node.setdefault(leaf.cert.node, []).append(leaf)

    def write(node) -> None:
        changes: dict[str, FileContent | None] = dict(ca_bundle_changes(node.control_plane, cas, config.mount))
        for leaf in by_node.get(node.name, []):
            changes.update(leaf_changes(leaf))
        if node.control_plane:
            changes.update(control_plane_files)
        NodeOutput(out, node.name).update_pki(changes)
        crash_point("node-written")

    files.map(write, config.nodes)


def _ensure_kubeconfigs(config: ClusterConfig, out: Path, dry_run: bool, files: PacedPool) -> list[Action]:
    """Per node in the pool; actions in node order, as ensure_kubeconfigs reports them."""
    per_node = files.map(lambda node: ensure_node_kubeconfigs(node, config, out, dry_run=dry_run), config.nodes)
    return [a for actions in per_node for a in actions]


def _write_rbac(out: Path) -> None:
    write_file(out / RBAC_FILE, public(render_rbac()))
