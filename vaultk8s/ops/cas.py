"""Bootstrap's CA phase: observe the three CA mounts, plan each (plan/cas.py), then apply.

HSM mode (config.hsm set): roots stay in the token and each mount gets an intermediate the
token's root signed (ops/hsm_ca.py, docs/hsm.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from vaultk8s import catalog
from vaultk8s.config import ClusterConfig
from vaultk8s.crashpoint import crash_point
from vaultk8s.ops.hsm_ca import HsmSigner, current_token_root, install_hsm_intermediate, probe_roots, root_authority
from vaultk8s.ops.leaves import CAState, read_ca_state
from vaultk8s.plan.actions import Action
from vaultk8s.plan.cas import AUTO_TIDY, ObservedCA, mount_ttl_seconds, plan_ca, root_params, url_params

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway


def ensure_cas(config: ClusterConfig, gateway: VaultGateway, *, now: datetime,
               dry_run: bool = False) -> tuple[dict[str, CAState], list[Action]]:
    """Every CA's state after the phase, and its actions. All three are planned first, so a refusal
    for one leaves the others untouched too."""
    with root_authority(config) as authority:
        roots = probe_roots(authority, {ca.name: current_token_root(config, gateway, ca) for ca in catalog.CAS})
        plans = []
        for ca in catalog.CAS:
            observed = _observe_ca(config.mount(ca.name), gateway, roots.get(ca.name), config.hsm is not None)
            plans.append((ca, plan_ca(ca, config, observed, gateway.addr)))
        if not dry_run:
            # Roots are made in the token before any Vault write: a token that cannot (mechanism,
            # key without cert) fails with every mount as it was.
            signer = HsmSigner(authority, config, now) if authority else None
            for ca, actions in plans:
                if signer and any(a.kind == "hsm-intermediate" for a in actions):
                    signer.ensure_root(ca)
            for ca, actions in plans:
                for action in actions:
                    _apply(action, ca, config, gateway, signer)
                    crash_point("ca-action")
    states = {ca.name: read_ca_state(gateway, config.mount(ca.name)) for ca in catalog.CAS}
    return states, [a for _, actions in plans for a in actions]


def _observe_ca(mount: str, gateway: VaultGateway, hsm_root_sha256: str | None = None,
                hsm: bool = False) -> ObservedCA:
    kind = gateway.mount_type(mount)
    if kind != "pki":
        return ObservedCA(mount_type=kind)
    ca_pem = gateway.read_ca_pem(mount)
    chain = tuple(gateway.read_ca_chain_pem(mount)) if ca_pem else ()
    # The issuer's name tells an adopted root (kept in HSM mode until `ca rotate`): read only then.
    name = ((gateway.read_issuer(mount, "default") or {}).get("issuer_name") or "") if ca_pem and hsm else ""
    return ObservedCA(kind, ca_pem, gateway.mount_max_ttl(mount), gateway.read_urls(mount), chain, hsm_root_sha256,
                      gateway.read_auto_tidy(mount), name)


def _apply(action: Action, ca: catalog.CASpec, config: ClusterConfig, gateway: VaultGateway,
           signer: HsmSigner | None) -> None:
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
