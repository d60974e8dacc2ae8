"""`vaultk8s adopt`: move a running kubeadm cluster's CAs and service-account key into Vault.

Order: read the kubeadm directory -> check it on its own and against the cluster file -> read
what Vault holds (no writes) -> plan, refusing a mount or key set that holds another cluster's ->
backup of the directory (0600, once) -> import each CA's certificate and key as its mount's issuer
`root` -> sa.key as the active key of the key set -> the adoption marker -> with --remove-ca-keys,
once Vault holds the same three keys, the CA key files. Re-running changes nothing.

Afterwards `vaultk8s bootstrap --out` over the node's directory reissues every leaf from the same
CAs in place (docs/adopt.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vaultk8s import catalog
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import ConfigError, PlanRefused, StoreError
from vaultk8s.ops import sa as sa_ops
from vaultk8s.plan import adopt as plan
from vaultk8s.plan.actions import Action, ActionReport
from vaultk8s.plan.cas import mount_ttl_seconds
from vaultk8s.plan.naming import ADOPTED_ROOT
from vaultk8s.store.atomic import FileContent, PayloadDir, public, read_file, write_file_in_place
from vaultk8s.store.backup import write_backup
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

MARKER_FILE = "vaultk8s-adopted.json"  # in the node directory: which cluster adopted it
# Not bootstrap's `root`: in HSM mode bootstrap keeps an adopted Vault-held root until `ca rotate`
# moves the CA to a token root, and refuses any other Vault-held root (plan/cas.py check_ca_mode).
ISSUER_NAME = KEY_NAME = ADOPTED_ROOT
MAX_FILE_BYTES = 1024 * 1024  # a kubeadm file is a few KB


@dataclass
class AdoptReport(ActionReport):
    dry_run: bool
    node: str
    actions: list[Action] = field(default_factory=list)
    backup: str | None = None

    def to_dict(self) -> dict:
        return {"dry_run": self.dry_run, "changed": self.changed, "node": self.node, "backup": self.backup,
                "actions": [a.to_dict() for a in self.actions]}


def default_backup(src: Path) -> Path:
    """Beside the directory, not in it: `/etc/kubernetes` -> `/etc/kubernetes.before-vaultk8s.tar`."""
    src = Path(src).absolute()
    return src.parent / f"{src.name}.before-vaultk8s.tar"


def adopt(config: ClusterConfig, src: Path, connect: Callable[[], VaultGateway], *, now: datetime,
          dry_run: bool = False, remove_ca_keys: bool = False, backup: Path | None = None) -> AdoptReport:
    """connect() is called only after the tree and the cluster file agree: a bad tree is named
    before anything about Vault (VAULT_ADDR included) is looked at."""
    src = Path(src)
    backup = Path(backup) if backup else default_backup(src)
    files = read_kubeadm_dir(src)
    tree = check_tree(config, src, files)
    _check_marker(config, src)
    gateway = connect()
    gateway.check_ready()
    observed = {ca.name: _observe_mount(gateway, config.mount(ca.name)) for ca in catalog.CAS}
    stored = _observe_key_set(gateway, config)
    report = AdoptReport(dry_run=dry_run, node=tree.node, backup=str(backup))
    if not backup.exists():
        report.actions.append(Action("write-file", str(backup), "the directory before adoption (0600, CA keys in it)"))
    report.actions.extend(plan.plan_cas(config, tree, observed))
    report.actions.extend(plan.plan_sa_key(config, tree, stored))
    marker = _marker(config)
    if read_file(src / MARKER_FILE) != marker.data:
        report.actions.append(Action("write-file", str(src / MARKER_FILE), f"adopted by cluster {config.name}"))
    removals = [f"{catalog.PKI_DIR}/{rel}" for rel in sorted(catalog.CA_KEY_FILES)
                if f"{catalog.PKI_DIR}/{rel}" in files] if remove_ca_keys else []
    report.actions.extend(Action("remove-file", str(src / rel), "Vault holds this CA key") for rel in removals)
    if dry_run:
        return report
    write_backup(backup, _backup_files(src))
    _import_cas(config, tree, gateway, [a.target for a in report.actions if a.kind == "import-ca"])
    if any(a.kind == "import-sa-key" for a in report.actions):
        sa_ops.ensure_key_set(config, gateway, now=now, dry_run=False, make_key=lambda _key_type: tree.sa_key)
    write_file_in_place(src / MARKER_FILE, marker)
    if removals:
        _remove_ca_keys(config, src, tree, gateway)
    return report


# --- reading and checking -------------------------------------------------------------------------

def read_kubeadm_dir(src: Path) -> dict[str, bytes]:
    """Every file of pki/ (plain or in the `..data` layout) and the kubeconfigs beside it, by path
    relative to src."""
    if not (src / catalog.PKI_DIR).is_dir():
        raise StoreError(f"{src} is not a kubeadm directory: {src / catalog.PKI_DIR} missing")
    return {rel: content.data for rel, content in _backup_files(src).items()}


def _backup_files(src: Path) -> dict[str, FileContent]:
    files = {f"{catalog.PKI_DIR}/{rel}": c for rel, c in PayloadDir(src / catalog.PKI_DIR).snapshot().items()}
    for path in sorted(src.glob("*.conf")):
        if path.is_file():
            files[path.name] = FileContent(path.read_bytes(), path.stat().st_mode & 0o777)
    too_big = [rel for rel, c in files.items() if len(c.data) > MAX_FILE_BYTES]
    if too_big:
        raise StoreError(f"{src}: {', '.join(too_big)} over {MAX_FILE_BYTES} bytes: not a kubeadm file")
    return files


def check_tree(config: ClusterConfig, src: Path, files: dict[str, bytes]) -> plan.KubeadmTree:
    """The tree, consistent and described by the cluster file; every problem in one error."""
    tree, problems = plan.read_tree(files)
    if tree is None:
        raise ConfigError(problems, source=f"kubeadm directory {src}")
    problems = plan.check_cluster(config, tree)
    if problems:
        raise ConfigError(problems, source=f"cluster file against {src}")
    return tree


def _marker(config: ClusterConfig) -> FileContent:
    return public((json.dumps({"cluster": config.name, "mount_prefix": config.mount_prefix}, sort_keys=True)
                   + "\n").encode())


def _check_marker(config: ClusterConfig, src: Path) -> None:
    found = read_file(src / MARKER_FILE)
    if found is None or found == _marker(config).data:
        return
    try:
        seen = json.loads(found)
        owner = f"cluster {seen['cluster']!r} (vault.mount_prefix {seen['mount_prefix']!r})"
    except (ValueError, KeyError, TypeError):
        owner = "another cluster"
    raise PlanRefused(f"{src} was adopted by {owner}, not cluster {config.name!r} "
                      f"(vault.mount_prefix {config.mount_prefix!r}): use that cluster's file")


def _observe_mount(gateway: VaultGateway, mount: str) -> plan.ObservedMount:
    kind = gateway.mount_type(mount)
    if kind != "pki":
        return plan.ObservedMount(kind)
    issuer = gateway.read_issuer(mount, "default") or {}
    return plan.ObservedMount(kind, issuer.get("certificate") or None, bool(issuer.get("key_id")),
                              issuer.get("issuer_name") or "")


def _observe_key_set(gateway: VaultGateway, config: ClusterConfig):
    settings = config.service_account
    if gateway.kv_version(settings.kv_mount) != "2":
        return None  # ensure_key_set refuses a non-KV-v2 engine there before anything is written
    stored = sa_ops.read_key_set(gateway, settings)
    return stored.keys if stored else None


# --- writing --------------------------------------------------------------------------------------

def _import_cas(config: ClusterConfig, tree: plan.KubeadmTree, gateway: VaultGateway, mounts: list[str]) -> None:
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        if mount not in mounts:
            continue
        if gateway.mount_type(mount) is None:
            gateway.enable_pki(mount, mount_ttl_seconds(config), f"vaultk8s {config.name}: {ca.description}")
        issuers, keys = gateway.import_issuer_bundle(mount, tree.cas[ca.name].bundle_pem)
        if not issuers:  # imported by an earlier, interrupted run: the mount's only issuer is it
            issuer = gateway.read_issuer(mount, "default") or {}
            issuers, keys = [issuer.get("issuer_id")], [issuer.get("key_id")]
        for issuer in issuers:  # PATCH: a POST would also ask for crl-signing, which kubeadm's CAs lack
            gateway.patch_issuer(mount, issuer, {"issuer_name": ISSUER_NAME})
            gateway.set_default_issuer(mount, issuer)
        for key in keys:
            gateway.name_key(mount, key, KEY_NAME)


def _remove_ca_keys(config: ClusterConfig, src: Path, tree: plan.KubeadmTree, gateway: VaultGateway) -> None:
    observed = {ca.name: _observe_mount(gateway, config.mount(ca.name)) for ca in catalog.CAS}
    missing = plan.ca_keys_in_vault(tree, observed)
    if missing:
        raise PlanRefused(f"Vault does not hold the key of {', '.join(missing)}: the CA key files stay")
    NodeOutput(src.parent, src.name).remove_ca_keys()


def derived_config(src: Path) -> str:
    """`adopt --print-config`: a cluster file describing the directory (underivable fields marked)."""
    src = Path(src)
    files = read_kubeadm_dir(src)
    tree, problems = plan.read_tree(files)
    if tree is None:
        raise ConfigError(problems, source=f"kubeadm directory {src}")
    return plan.render_derived(*plan.derive_config(tree, files))
