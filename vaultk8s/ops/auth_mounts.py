"""The auth method mounts a cluster owns (its AppRole, cert and JWT mounts): enabled when absent,
refused when the path already holds another method."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PlanRefused
from vaultk8s.plan.actions import Action

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway


def ensure_auth_mount(config: ClusterConfig, gateway: VaultGateway, actions: list[Action], dry_run: bool,
                      method: str, mount: str, why: str, what: str) -> str | None:
    """The mount's accessor, enabling it first when absent (None only on a dry run that would enable it).
    why: the action's reason; what: the mount's description in Vault, after the cluster's name."""
    found = gateway.auth_accessor(mount)
    if found is not None:
        if found[0] != method:
            raise PlanRefused(f"auth/{mount} is already a {found[0]!r} auth method, not {method}: "
                              "choose another vault.mount_prefix")
        return found[1]
    actions.append(Action("enable-auth", f"auth/{mount}", why))
    if dry_run:
        return None
    gateway.enable_auth(method, mount, f"vaultk8s {config.name}: {what}")
    return gateway.auth_accessor(mount)[1]
