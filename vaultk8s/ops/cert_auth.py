"""The nodes' certificate login (Vault's TLS cert auth): the trust its entries pin, kept right.

Each node's entry `auth/<prefix>cert/certs/node-<node>` (written by `policy apply`) trusts the
kubernetes-ca bundle: every still-trusted root of every rotation generation, plus the chain
certificates between them and the leaves (HSM intermediates, cross-signed roots), since the agent
presents only its leaf. The bundle changes when bootstrap creates the CA and in each `ca rotate`
phase; both then rewrite the `certificate` field of every existing entry (only that field: the
operator's grant allows nothing else), before leaves from a new root are issued.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from vaultk8s import catalog, crypto
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PermissionDeniedError
from vaultk8s.ops.leaves import read_ca_state
from vaultk8s.plan import naming
from vaultk8s.plan.actions import Action

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway


def login_trust(config: ClusterConfig, gateway: VaultGateway) -> str | None:
    """The PEM bundle a node's entry trusts; None while kubernetes-ca has no CA yet."""
    state = read_ca_state(gateway, config.mount(catalog.LOGIN_CA))
    if state.issuer is None:
        return None
    certs = list(state.anchors) + [c for c in state.intermediates if c not in state.anchors]
    return b"".join(crypto.cert_pem(c) for c in certs).decode()


def placeholder_trust(now: datetime) -> str:
    """What an entry trusts before kubernetes-ca exists: a root whose key nobody holds."""
    return crypto.unusable_anchor("vaultk8s: kubernetes-ca not bootstrapped yet", now).decode()


def ensure_login_trust(config: ClusterConfig, gateway: VaultGateway, *, dry_run: bool = False) -> list[Action]:
    """Every existing node entry trusts today's kubernetes-ca bundle. Entries are never created
    here (policy apply does, with the node's policies): a missing one is left alone."""
    trust = login_trust(config, gateway)
    if trust is None:
        return []
    mount, actions = naming.cert_mount(config), []
    if not _mounted(gateway, mount, naming.cert_entry(config.nodes[0].name)):
        return []  # no certificate logins in this Vault yet (policy apply makes them): nothing to keep
    for node in config.nodes:
        name = naming.cert_entry(node.name)
        try:
            entry = gateway.read_cert_entry(mount, name)
        except PermissionDeniedError:
            raise PermissionDeniedError(f"this token may not read auth/{mount}/certs/{name}: an operator policy "
                                        "from before certificate logins? an admin runs `vaultk8s policy apply`, "
                                        "then re-run") from None
        if entry is None or crypto.same_certificates(entry.get("certificate"), trust):
            continue
        actions.append(Action("write-cert-trust", f"auth/{mount}/certs/{name}",
                              f"node {node.name}'s certificate login trusts the kubernetes-ca bundle"))
        if not dry_run:
            gateway.write_cert_trust(mount, name, trust)
    return actions


def _mounted(gateway: VaultGateway, mount: str, first_entry: str) -> bool:
    """Whether the cert mount exists, asked once: read per node, a missing mount is "no handler for
    route", which the client waits out as a standby's lag (a few seconds) on every call."""
    try:
        mounted, _ = gateway.read_auth_config(f"auth/{mount}/certs/{first_entry}")
    except PermissionDeniedError:
        return True  # the per-node reads below name the missing grant
    return mounted
