"""The CSR signer's Vault identity in the cluster: a JWT auth mount that accepts its projected
ServiceAccount token, validated offline against the service-account keys vaultk8s keeps.

`policy apply` (admin) enables `<prefix>jwt` and writes the role `csr-signer`; it, bootstrap and
every `sa rotate` phase (operator) write the mount's config so `jwt_validation_pubkeys` always
equals sa.pub (the staged, active and previous keys kube-apiserver verifies with). Vault never
calls the API server. The signer logs in with `login`, re-reading the token file each time.

Outside the cluster it logs in with an AppRole secret_id instead, and replaces that secret_id
itself at 2/3 of its life (`refresh_secret_id`), as an agent's certificate renews itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from vaultk8s.plan.leaves import renewal_time
from vaultk8s.store.atomic import read_file, secret, write_file

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


@dataclass(frozen=True)
class SecretIdState:
    """The signer's AppRole secret_id after a login: when it lapses and when it is replaced next."""
    issued: datetime | None = None
    expiry: datetime | None = None  # None: no end (policy.secret_id_ttl 0), or Vault could not say
    renew_at: datetime | None = None  # 2/3 of its life; None: never
    rotated: bool = False


def refresh_secret_id(config: ClusterConfig, gateway: VaultGateway, credentials_dir: Path,
                      now: datetime) -> SecretIdState:
    """After an AppRole login (gateway holds its token): once 2/3 of the directory's secret_id's life has
    passed, generate a new one, write it (0600, atomically) and only then destroy the old one, so a copy
    of the directory taken before is worth nothing. Raises on a failed replacement; the old one stays."""
    path = Path(credentials_dir) / SECRET_ID_FILE
    held = (read_file(path) or b"").decode(errors="replace").strip()
    if not held:
        return SecretIdState()
    am, role = naming.approle_mount(config), naming.CSR_SIGNER_APPROLE_ROLE
    state = _secret_id_state(gateway.lookup_secret_id(am, role, held))
    if state.renew_at is None or now < state.renew_at:
        return state
    fresh = gateway.generate_secret_id(am, role)
    try:
        write_file(path, secret(fresh.encode()))
    except StoreError:
        try:
            gateway.destroy_secret_id(am, role, fresh)  # nobody holds it: leave nothing behind
        except VaultError:
            pass  # it lapses at its TTL; the write's failure is the one to report
        raise
    gateway.destroy_secret_id(am, role, held)
    return replace(_secret_id_state(gateway.lookup_secret_id(am, role, fresh)), rotated=True)


def _secret_id_state(found: dict | None) -> SecretIdState:
    issued = plan_status.vault_time((found or {}).get("creation_time"))
    expiry = plan_status.vault_time((found or {}).get("expiration_time"))
    renew_at = renewal_time(issued, expiry) if issued and expiry else None
    return SecretIdState(issued, expiry, renew_at)


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
