"""The CSR signer's Vault identity in the cluster: a JWT auth mount that accepts its projected
ServiceAccount token, validated offline against the service-account keys vaultk8s keeps.

`policy apply` (admin) enables `<prefix>jwt` and writes the role `csr-signer`; it, bootstrap and
every `sa rotate` phase (operator) write the mount's config so `jwt_validation_pubkeys` always
equals sa.pub (the staged, active and previous keys kube-apiserver verifies with). Vault never
calls the API server. The signer logs in with `login`, re-reading the token file each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vaultk8s.config import ClusterConfig
from vaultk8s.errors import StoreError, VaultError
from vaultk8s.ops.auth_mounts import ensure_auth_mount
from vaultk8s.ops.node import SECRET_ID_FILE
from vaultk8s.plan import jwt_claims, machine_auth, naming, sa
from vaultk8s.plan import status as plan_status
from vaultk8s.plan.actions import Action
from vaultk8s.store.atomic import read_file

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

JWT_AUTH = "jwt"


def public_pems(keys: sa.KeySet) -> list[str]:
    """The public keys kube-apiserver verifies tokens with: exactly sa.pub's."""
    return [k.public_pem for k in keys.verifying]


def ensure_mount(config: ClusterConfig, gateway: VaultGateway, actions: list[Action], dry_run: bool) -> bool:
    """Enable the cluster's JWT mount when absent; True when it is mounted (False only on a dry run)."""
    accessor = ensure_auth_mount(config, gateway, actions, dry_run, JWT_AUTH, naming.jwt_mount(config),
                                 "JWT mount: the CSR signer's projected ServiceAccount token",
                                 "CSR signer (ServiceAccount tokens)")
    return accessor is not None


def sync_keys(config: ClusterConfig, gateway: VaultGateway, keys: sa.KeySet, dry_run: bool,
              just_enabled: bool = False) -> list[Action]:
    """Make the JWT config's keys (and issuer) match the key set; [] when they do, or when no JWT
    mount exists yet (`policy apply` writes the config when it enables the mount, just_enabled)."""
    path = f"auth/{naming.jwt_mount(config)}/config"
    want = machine_auth.jwt_config_params(config, public_pems(keys))
    mounted, have = gateway.read_auth_config(path, just_enabled=just_enabled)
    drift = machine_auth.jwt_config_drift(want, have)
    if not mounted or not drift:
        return []
    action = Action("write-jwt-config", path, f"{len(want['jwt_validation_pubkeys'])} key(s) of sa.pub: "
                    + ("missing" if drift == ["(missing)"] else "differs in " + ", ".join(drift)))
    if dry_run:
        return [action]
    return [action] if gateway.write_auth_config(path, want) else []


@dataclass(frozen=True)
class Login:
    lease_seconds: int  # of the Vault token (0: no expiry)
    credential_expiry: datetime | None  # the JWT's `exp`


def approle_secret_id_expiry(config: ClusterConfig, gateway: VaultGateway, credentials_dir: Path) -> datetime | None:
    """When the signer's own AppRole secret_id (in credentials_dir, after login unwrapped it) lapses;
    None when it has no end or cannot be read (a gauge, not worth failing a login for)."""
    data = read_file(Path(credentials_dir) / SECRET_ID_FILE)
    if not data:
        return None
    try:
        found = gateway.lookup_secret_id(naming.approle_mount(config), naming.CSR_SIGNER_APPROLE_ROLE,
                                         data.decode(errors="replace").strip())
    except VaultError:
        return None
    return plan_status.vault_time((found or {}).get("expiration_time"))


def login(config: ClusterConfig, gateway: VaultGateway, jwt_file: Path) -> Login:
    """Log in at auth/<prefix>jwt/login as role csr-signer with the token in jwt_file (read now:
    kubelet rewrites a projected token before it expires); gateway then uses the Vault token."""
    data = read_file(Path(jwt_file))
    jwt = (data or b"").decode(errors="replace").strip()
    if not jwt:
        raise StoreError(f"--jwt-file {jwt_file} is missing or empty: mount the projected ServiceAccount token "
                         "(deploy/signer/signer.yaml)")
    token, lease = gateway.login_jwt(naming.jwt_mount(config), naming.CSR_SIGNER_JWT_ROLE, jwt)
    gateway.use_token(token)
    return Login(lease, jwt_claims.expiry(jwt))
