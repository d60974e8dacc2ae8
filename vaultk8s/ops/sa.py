"""Service-account keys: the key set lives in Vault KV v2; sa.key/sa.pub are copies on each control plane.

Every change to the key set is a check-and-set write, so two operators cannot both rotate from the
same version. Files are written only after Vault accepted the new state, and sa.key with sa.pub in
one pki/ update. Private keys never appear in messages, reports or reprs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, TYPE_CHECKING

from vaultk8s import catalog, crypto
from vaultk8s.crashpoint import crash_point
from vaultk8s.durations import hours_minutes
from vaultk8s.config import ClusterConfig, SASettings
from vaultk8s.errors import PermissionDeniedError, PlanRefused, VaultError
from vaultk8s.ops import signer_auth
from vaultk8s.plan import sa
from vaultk8s.plan.actions import Action
from vaultk8s.store.atomic import FileContent, check_writable, public, secret
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

KeyFactory = Callable[[str], crypto.PrivateKey]


@dataclass(frozen=True)
class StoredKeySet:
    keys: sa.KeySet
    version: int  # the KV version, for check-and-set


@dataclass
class RotateReport:
    phase: sa.SARotationPhase
    changed: bool
    kv_version: int
    keys: sa.KeySet
    actions: list[Action] = field(default_factory=list)
    destroyed_versions: tuple[int, ...] = ()  # older KV versions retire destroyed

    def to_dict(self) -> dict:
        return {"phase": self.phase.value, "changed": self.changed, "kv_version": self.kv_version,
                "destroyed_versions": list(self.destroyed_versions),
                "actions": [a.to_dict() for a in self.actions]}


# --- Vault --------------------------------------------------------------------------------------

def read_key_set(gateway: VaultGateway, settings: SASettings) -> StoredKeySet | None:
    found = gateway.kv2_read(settings.kv_mount, settings.kv_path)
    if found is None:
        return None
    doc, version = found
    try:
        return StoredKeySet(sa.from_document(doc), version)
    except ValueError as err:
        raise VaultError(
            f"the service-account key set at {settings.kv_mount}/data/{settings.kv_path} (version {version}) "
            f"is corrupt: {err}; restore a good version with `bao kv rollback`"
        ) from None


def readable_key_set(gateway: VaultGateway, settings: SASettings) -> tuple[sa.KeySet | None, str | None]:
    """The key set for `policy apply|diff`, or (None, a note why not): none yet, or not readable."""
    where = f"{settings.kv_mount}/data/{settings.kv_path}"
    try:
        stored = read_key_set(gateway, settings) if gateway.kv_version(settings.kv_mount) == "2" else None
    except PermissionDeniedError:
        return None, f"{where} is not readable with this token: the signer's JWT keys were not compared"
    if stored is None:
        return None, f"no service-account key set at {where} yet: bootstrap writes the signer's JWT keys"
    return stored.keys, None


def require_mount(gateway: VaultGateway, settings: SASettings) -> None:
    version = gateway.kv_version(settings.kv_mount)
    if version == "2":
        return
    if version is None and gateway.mount_type(settings.kv_mount) is None:
        raise VaultError(
            f"KV mount {settings.kv_mount}/ does not exist: run `vaultk8s bootstrap` first, "
            "or set service_account.kv_mount to an existing KV v2 mount"
        )
    raise PlanRefused(f"Vault path {settings.kv_mount}/ is not a KV version 2 engine: "
                      "set service_account.kv_mount to a KV v2 mount")


def _bootstrapped_key_set(gateway: VaultGateway, settings: SASettings) -> StoredKeySet:
    """The stored key set, for the commands that need bootstrap to have made it."""
    gateway.check_ready()
    require_mount(gateway, settings)
    stored = read_key_set(gateway, settings)
    if stored is None:
        raise PlanRefused(f"no service-account key in {settings.kv_mount}/data/{settings.kv_path}: "
                          "run `vaultk8s bootstrap` first")
    return stored


def _write_key_set(gateway: VaultGateway, settings: SASettings, keys: sa.KeySet, cas: int) -> int:
    return gateway.kv2_write(settings.kv_mount, settings.kv_path, sa.to_document(keys), cas)


# --- bootstrap ----------------------------------------------------------------------------------

def ensure_key_set(config: ClusterConfig, gateway: VaultGateway, *, now: datetime, dry_run: bool,
                   make_key: KeyFactory = crypto.generate_key) -> tuple[sa.KeySet | None, list[Action]]:
    """Create the KV mount and the first key when absent; an existing key is never replaced."""
    settings = config.service_account
    actions: list[Action] = []
    version = gateway.kv_version(settings.kv_mount)
    if version is None:
        if gateway.mount_type(settings.kv_mount) is not None:
            raise PlanRefused(f"Vault path {settings.kv_mount}/ is already another engine, not KV: "
                              "set service_account.kv_mount")
        actions.append(Action("enable-mount", settings.kv_mount, "KV v2 mount for service-account keys missing"))
        if not dry_run:
            gateway.enable_kv2(settings.kv_mount, f"vaultk8s {config.name}: service-account keys")
    elif version != "2":
        raise PlanRefused(f"Vault path {settings.kv_mount}/ is KV version {version}; service-account keys "
                          "need KV v2 (check-and-set): set service_account.kv_mount")
    stored = read_key_set(gateway, settings) if version == "2" else None
    if stored is not None:  # still compared: a JWT mount enabled after the key set gets its keys here
        return stored.keys, actions + signer_auth.sync_keys(config, gateway, stored.keys, dry_run)
    target = f"{settings.kv_mount}/data/{settings.kv_path}"
    actions.append(Action("generate-key", target, f"no service-account key yet: {settings.key_type}, "
                                                  f"max_versions {sa.KV_MAX_VERSIONS}"))
    if dry_run:
        return None, actions
    keys = sa.initial(sa.new_key(make_key(settings.key_type), now), now)
    # Metadata first: if the write below fails, a re-run finds no key and sets it again (idempotent).
    gateway.kv2_set_max_versions(settings.kv_mount, settings.kv_path, sa.KV_MAX_VERSIONS)
    crash_point("sa-metadata")
    _write_key_set(gateway, settings, keys, cas=0)
    return keys, actions + signer_auth.sync_keys(config, gateway, keys, dry_run=False)


# --- files --------------------------------------------------------------------------------------

def key_files(keys: sa.KeySet) -> dict[str, FileContent]:
    return {catalog.SA_KEY_FILE: secret(sa.key_pem(keys)), catalog.SA_PUB_FILE: public(sa.pub_pem(keys))}


def plan_key_files(config: ClusterConfig, out: Path, keys: sa.KeySet | None) -> list[Action]:
    """write-file actions for control-plane nodes whose sa.key/sa.pub differ from the key set."""
    if keys is None:
        return [Action("write-file", f"{n.name}/pki/{f}", "new service-account key")
                for n in config.control_plane for f in (catalog.SA_KEY_FILE, catalog.SA_PUB_FILE)]
    actions = []
    for node in config.control_plane:
        output = NodeOutput(out, node.name)
        for name, content in key_files(keys).items():
            have = output.read_pki(name)
            if have != content.data:
                reason = "missing" if have is None else "service-account key set changed"
                actions.append(Action("write-file", f"{node.name}/pki/{name}", reason))
    return actions


def write_key_files(config: ClusterConfig, out: Path, keys: sa.KeySet) -> None:
    files = key_files(keys)
    for node in config.control_plane:
        NodeOutput(out, node.name).update_pki(files)


# --- rotation -----------------------------------------------------------------------------------

def rotate(config: ClusterConfig, out: Path, gateway: VaultGateway, phase: sa.SARotationPhase, *, now: datetime,
           force: bool = False, make_key: KeyFactory = crypto.generate_key) -> RotateReport:
    """One rotation phase: check-and-set the key set in Vault, then refresh every control plane's files.

    A phase that is already done changes nothing in Vault but still repairs files on disk.
    """
    settings = config.service_account
    stored = _bootstrapped_key_set(gateway, settings)
    needs_key = phase is sa.SARotationPhase.STAGE and stored.keys.staged is None
    new = sa.new_key(make_key(settings.key_type), now) if needs_key else None
    keys = sa.apply_phase(stored.keys, phase, now, settings.grace_period, new=new, force=force)
    check_writable(Path(out))  # after the refusals (they touch nothing), before Vault changes
    version = stored.version
    actions: list[Action] = []
    if keys != stored.keys:
        version = _write_key_set(gateway, settings, keys, cas=stored.version)
        actions.append(Action("write-kv", f"{settings.kv_mount}/data/{settings.kv_path}", _describe(phase, keys)))
    actions.extend(_sync_signer_keys(config, gateway, phase, keys, version))
    actions.extend(plan_key_files(config, out, keys))
    write_key_files(config, out, keys)
    destroyed: tuple[int, ...] = ()
    if phase is sa.SARotationPhase.RETIRE:
        destroyed = _destroy_old_versions(gateway, settings, keys, version, wrote=keys != stored.keys)
    if destroyed:
        actions.append(Action("destroy-kv-versions", f"{settings.kv_mount}/destroy/{settings.kv_path}",
                              f"versions {', '.join(map(str, destroyed))} held the retired private key"))
    return RotateReport(phase, keys != stored.keys or bool(destroyed), version, keys, actions, destroyed)


def _sync_signer_keys(config: ClusterConfig, gateway: VaultGateway, phase: sa.SARotationPhase, keys: sa.KeySet,
                      version: int) -> list[Action]:
    """Every phase, also one already done (so a re-run repairs a failed write): the signer's JWT
    login accepts exactly the tokens kube-apiserver will (stage adds the key, retire removes it)."""
    try:
        return signer_auth.sync_keys(config, gateway, keys, dry_run=False)
    except VaultError as err:
        raise type(err)(f"key set at KV version {version}, but the signer's JWT keys were not updated: {err}; "
                        f"re-run `vaultk8s sa rotate --phase {phase.value}`") from None


def _destroy_old_versions(gateway: VaultGateway, settings: SASettings, keys: sa.KeySet, version: int,
                          wrote: bool) -> tuple[int, ...]:
    """After retire: permanently destroy the versions older than `version` (KV keeps them otherwise).

    Also runs when retire was already done, so a destroy that failed last time is finished by re-running.
    """
    if not sa.cleans_history(keys):
        return ()  # nothing retired yet: keep the history (and need no metadata access)
    where = f"{settings.kv_mount}/data/{settings.kv_path}"
    try:
        _, versions = gateway.kv2_versions(settings.kv_mount, settings.kv_path) or (0, [])
        history = tuple(sa.StoredVersion(n, destroyed, deleted) for n, destroyed, deleted in versions)
        doomed = sa.destroy_after_retire(keys, version, history)
        gateway.kv2_destroy(settings.kv_mount, settings.kv_path, list(doomed))
    except VaultError as err:
        done = f"retired in {where} (version {version}) and node files written" if wrote else "retire already done"
        raise type(err)(f"{done}, but older versions may still hold the retired private key: {err}; "
                        "re-run `vaultk8s sa rotate --phase retire` to destroy them") from None
    return doomed


def _describe(phase: sa.SARotationPhase, keys: sa.KeySet) -> str:
    if phase is sa.SARotationPhase.STAGE:
        return f"staged key {keys.staged.id[:12]}"
    if phase is sa.SARotationPhase.PROMOTE:
        return f"key {keys.active.id[:12]} now signs"
    return "previous key(s) retired"


# --- status -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyStatus:
    id: str
    key_type: str
    state: str
    created: datetime
    since: datetime
    age_seconds: int
    retire_after: datetime | None

    def to_dict(self) -> dict:
        return {"id": self.id, "key_type": self.key_type, "state": self.state,
                "created": self.created.isoformat(), "since": self.since.isoformat(),
                "age_seconds": self.age_seconds,
                "retire_after": self.retire_after.isoformat() if self.retire_after else None}


@dataclass(frozen=True)
class SAStatus:
    kv_path: str
    kv_version: int
    grace_period: str
    next_step: str
    keys: tuple[KeyStatus, ...]

    def to_dict(self) -> dict:
        return {"kv_path": self.kv_path, "kv_version": self.kv_version, "grace_period": self.grace_period,
                "next_step": self.next_step, "keys": [k.to_dict() for k in self.keys]}


def status(config: ClusterConfig, gateway: VaultGateway, *, now: datetime) -> SAStatus:
    settings = config.service_account
    stored = _bootstrapped_key_set(gateway, settings)
    where = f"{settings.kv_mount}/data/{settings.kv_path}"
    rows = tuple(_key_status(k, now, settings) for k in stored.keys.keys)
    return SAStatus(where, stored.version, hours_minutes(settings.grace_period),
                    sa.next_step(stored.keys), rows)


def _key_status(key: sa.SAKey, now: datetime, settings: SASettings) -> KeyStatus:
    since = {sa.KeyState.STAGED: key.created, sa.KeyState.ACTIVE: key.activated,
             sa.KeyState.PREVIOUS: key.deactivated, sa.KeyState.RETIRED: key.retired}[key.state] or key.created
    retire_at = sa.retire_after(key, settings.grace_period) if key.state is sa.KeyState.PREVIOUS else None
    return KeyStatus(key.id, key.key_type, key.state.value, key.created, since,
                     max(0, int((now - key.created).total_seconds())), retire_at)
