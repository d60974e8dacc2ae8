"""`vaultk8s node credentials|revoke`: a node's machine credential, written to 0600 files.

The credential is only as strong as the binding `policy apply` made: the node's AppRole role and
token role carry the node's policy set, and both are aliases of the node's identity entity whose
metadata names the node. Revoking destroys every secret_id and deletes the entity, which makes
every live token of the node useless at once (its templated paths no longer resolve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PermissionDeniedError, PlanRefused, StoreError, VaultError
from vaultk8s.durations import rfc3339
from vaultk8s.plan import grants, machine_auth, naming
from vaultk8s.store.atomic import check_writable, read_file, remove_file, secret, write_file

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

ROLE_ID_FILE = "role_id"
SECRET_ID_FILE = "secret_id"
WRAPPED_SECRET_ID_FILE = "secret_id.wrapped"
TOKEN_FILE = "token"
MOUNT_FILE = "approle_mount"


@dataclass
class CredentialsReport:
    node: str
    files: list[str] = field(default_factory=list)
    previous_secret_id: str | None = None  # what became of the secret_id the directory held (PREVIOUS_*)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"node": self.node, "files": self.files, "previous_secret_id": self.previous_secret_id,
                "warnings": self.warnings}


PREVIOUS_DESTROYED = "destroyed"
PREVIOUS_KEPT = "kept"  # Vault refused the destroy: it lapses at its TTL


def write_credentials(config: ClusterConfig, node_name: str, out: Path, gateway: VaultGateway, *,
                      wrap_ttl_seconds: int | None = None, token: bool = False) -> CredentialsReport:
    """role_id and a secret_id (or a response-wrapped secret_id), and optionally a plain token."""
    node = config.node(node_name)
    out = Path(out)
    check_writable(out)
    gateway.check_ready()
    am, role = naming.approle_mount(config), naming.approle_role(node.name)
    entity = gateway.read_entity(naming.entity_name(config, node.name))
    if entity is None:
        raise PlanRefused(f"node {node.name} has no identity in Vault (new?): an admin runs `vaultk8s policy apply` first")
    if ((entity.get("metadata") or {}).get(naming.REVOKED_METADATA_KEY)):
        raise PlanRefused(f"node {node.name} was revoked: an admin runs `vaultk8s policy apply --readmit {node.name}` first")
    report = CredentialsReport(node.name)
    _write_login(out, gateway, am, role, wrap_ttl_seconds, report,
                 f"no AppRole role for node {node.name}: run `vaultk8s policy apply` first")
    if token:
        params = machine_auth.token_create_params(config, node)
        made = gateway.create_token(naming.entity_name(config, node.name), params)
        _write(out, TOKEN_FILE, made, report)
    return report


def write_signer_credentials(config: ClusterConfig, out: Path, gateway: VaultGateway, *,
                             wrap_ttl_seconds: int | None = None) -> CredentialsReport:
    """The CSR signer's role_id and a secret_id (or a wrapped one), in the layout `login_from_dir` reads."""
    out = Path(out)
    check_writable(out)
    gateway.check_ready()
    am, role = naming.approle_mount(config), naming.CSR_SIGNER_APPROLE_ROLE
    report = CredentialsReport(grants.CSR_SIGNER)
    _write_login(out, gateway, am, role, wrap_ttl_seconds, report,
                 "no AppRole role for the CSR signer: an admin runs `vaultk8s policy apply` first")
    return report


def _write_login(out: Path, gateway: VaultGateway, am: str, role: str, wrap_ttl_seconds: int | None,
                 report: CredentialsReport, no_role: str) -> None:
    """role_id, the AppRole mount and a new secret_id (wrapped with wrap_ttl_seconds), as `login_from_dir` reads them."""
    role_id = gateway.role_id(am, role)
    if role_id is None:
        raise PlanRefused(no_role)
    previous = _held_secret_id(out, am, role_id)
    _write(out, ROLE_ID_FILE, role_id, report)
    _write(out, MOUNT_FILE, am, report)
    secret_id = gateway.generate_secret_id(am, role, wrap_ttl_seconds)
    if wrap_ttl_seconds:
        _write(out, WRAPPED_SECRET_ID_FILE, secret_id, report)
        remove_file(out / SECRET_ID_FILE)  # a stale plain secret_id would shadow the new one
    else:
        _write(out, SECRET_ID_FILE, secret_id, report)
    if previous is not None:
        _destroy_previous(gateway, am, role, previous, out, report)


def _held_secret_id(out: Path, mount: str, role_id: str) -> str | None:
    """The plain secret_id the directory already holds for this very role (same role_id and mount)."""
    held = {name: read_file(out / name) for name in (ROLE_ID_FILE, MOUNT_FILE, SECRET_ID_FILE)}
    if any(value is None for value in held.values()):
        return None
    if (held[ROLE_ID_FILE].decode().strip(), held[MOUNT_FILE].decode().strip()) != (role_id, mount):
        return None
    return held[SECRET_ID_FILE].decode().strip() or None


def _destroy_previous(gateway: VaultGateway, mount: str, role: str, secret_id: str, out: Path,
                      report: CredentialsReport) -> None:
    """Overwriting the file leaves the old secret_id alive in Vault, worth as much as any copy of it:
    destroy it, after the new one is safely written. A refusal only warns (it lapses at its TTL)."""
    try:
        gateway.destroy_secret_id(mount, role, secret_id)
    except VaultError as err:
        # only a 403 is the policy's doing (the token just made the new one, so it is alive)
        hint = "; an admin's `vaultk8s policy apply` grants operators its destroy" \
            if isinstance(err, PermissionDeniedError) else ""
        report.previous_secret_id = PREVIOUS_KEPT
        report.warnings.append(f"the secret_id {out / SECRET_ID_FILE} held before stays valid until its TTL "
                               f"({err}){hint}")
        return
    report.previous_secret_id = PREVIOUS_DESTROYED


def _write(out: Path, name: str, value: str, report: CredentialsReport) -> None:
    write_file(out / name, secret(value.encode()))
    report.files.append(str(out / name))


def login_from_dir(directory: Path, gateway: VaultGateway) -> str:
    """Log in with the files `write_credentials` wrote; unwraps a wrapped secret_id once, keeping it 0600.

    This is what the CSR signer calls; the returned token is never written or printed here.
    """
    return approle_login(directory, gateway)[0]


def approle_login(directory: Path, gateway: VaultGateway) -> tuple[str, str]:
    """login_from_dir, also returning the secret_id used (the agent destroys it once enrolled)."""
    directory = Path(directory)
    role_id = _read(directory, ROLE_ID_FILE)
    mount = read_approle_mount(directory)
    secret_id = enrolment_secret_id(directory, gateway)
    return gateway.login_approle(mount, role_id, secret_id), secret_id


def enrolment_secret_id(directory: Path, gateway: VaultGateway) -> str:
    """The secret_id in the directory; a wrapped one is unwrapped once and kept as `secret_id` (0600)."""
    directory = Path(directory)
    wrapped = read_file(directory / WRAPPED_SECRET_ID_FILE)
    if wrapped is None:
        return _read(directory, SECRET_ID_FILE)
    secret_id = gateway.unwrap(wrapped.decode().strip())["secret_id"]
    write_file(directory / SECRET_ID_FILE, secret(secret_id.encode()))
    remove_file(directory / WRAPPED_SECRET_ID_FILE)
    return secret_id


def read_approle_mount(directory: Path) -> str:
    return _read(Path(directory), MOUNT_FILE)


def holds_enrolment(directory: Path) -> bool:
    """The directory still holds an enrolment secret_id (plain or wrapped)."""
    return any(read_file(Path(directory) / name) for name in (SECRET_ID_FILE, WRAPPED_SECRET_ID_FILE))


def forget_enrolment(directory: Path) -> None:
    """Delete the enrolment secret_id's files (role_id and the mount name stay: not secret on their own)."""
    for name in (SECRET_ID_FILE, WRAPPED_SECRET_ID_FILE):
        remove_file(Path(directory) / name)


def authenticate(gateway: VaultGateway, credentials_dir: Path | None = None, token_file: Path | None = None) -> bool:
    """Give gateway its token: AppRole files (`node credentials`), a token file, or VAULT_TOKEN as set.

    True when this logged in (the caller then owns a token to revoke).
    """
    if credentials_dir is not None:
        gateway.use_token(login_from_dir(credentials_dir, gateway))
        return True
    if token_file is not None:
        token = read_file(token_file)
        if not token:
            raise StoreError(f"token file {token_file} is missing or empty")
        gateway.use_token(token.decode().strip())
        try:
            gateway.renew_self()  # keeps a renewable periodic token alive; others just expire
        except VaultError:
            pass
    return False


def _read(directory: Path, name: str) -> str:
    data = read_file(directory / name)
    if data is None:
        raise StoreError(f"{directory / name} is missing: run `vaultk8s node credentials` for this node")
    return data.decode().strip()


@dataclass
class RevokeReport:
    node: str
    secret_ids_destroyed: int = 0
    entity_deleted: bool = False
    cert_entry_deleted: bool = False

    def to_dict(self) -> dict:
        return {"node": self.node, "secret_ids_destroyed": self.secret_ids_destroyed,
                "entity_deleted": self.entity_deleted, "cert_entry_deleted": self.cert_entry_deleted}


def revoke(config: ClusterConfig, node_name: str, gateway: VaultGateway, *, tokens: bool = True,
           now: datetime | None = None) -> RevokeReport:
    """Destroy every secret_id and the certificate login of the node; with tokens, delete its entity so
    live tokens stop working. A marker (revoked_marker) keeps the node out through later `policy apply` runs.

    Re-admitting the node afterwards is an admin decision: `policy apply --readmit`, then `node credentials`.
    """
    node = config.node(node_name)
    gateway.check_ready()
    am, role = naming.approle_mount(config), naming.approle_role(node.name)
    report = RevokeReport(node.name)
    for accessor in gateway.list_secret_id_accessors(am, role):
        gateway.destroy_secret_id_accessor(am, role, accessor)
        report.secret_ids_destroyed += 1
    cm, entry = naming.cert_mount(config), naming.cert_entry(node.name)
    if gateway.read_cert_entry(cm, entry) is not None:
        gateway.delete_cert_entry(cm, entry)
        report.cert_entry_deleted = True
    name = naming.entity_name(config, node.name)
    entity = gateway.read_entity(name)
    marker = revoked_marker(config, node, entity, now or datetime.now(timezone.utc))
    if tokens and entity is not None and not entity.get("disabled"):
        gateway.delete_entity(name)  # a new (disabled) entity below: old tokens die with the old one
        report.entity_deleted = True
    gateway.write_entity(name, marker, disabled=tokens)
    return report


def revoked_marker(config: ClusterConfig, node, entity: dict | None, now: datetime) -> dict[str, str]:
    """The revoked node's entity metadata: `policy apply` leaves a node with it out until --readmit.

    Once live tokens are to stop, the marker is a new entity, disabled and without aliases: no login
    maps to it, and re-admission replaces it rather than re-enabling the old entity (its tokens)."""
    found = ((entity or {}).get("metadata") or {}).get(naming.REVOKED_METADATA_KEY)
    return {**machine_auth.entity_metadata(config, node), naming.REVOKED_METADATA_KEY: found or rfc3339(now)}
