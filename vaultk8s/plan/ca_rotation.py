"""CA rotation without downtime: which phase a mount is in, and what a phase must do. Pure.

The state lives in the mount's issuers, by name (no local file):
  root | root-g<N>         the signing issuer of generation N (the first one is bootstrap's `root`)
  cross-g<N>               generation N's key signed by the previous root: clients that still
                           trust only the old root accept leaves of the new one through it
  retired-g<N>-until-<T>   an old root without issuing-certificates usage, kept until T (when
                           every leaf it signed has expired), then deleted by a later retire
Phases: stage (new root + cross-signature; the default issuer's chain lists the new root, so every
trust bundle becomes old + new), switch (the new root becomes the default; leaves re-issued),
retire (refused while a leaf under --out chains to the old root; bundles drop it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from cryptography import x509

from vaultk8s import crypto
from vaultk8s.errors import PlanRefused
from vaultk8s.plan.actions import Action
from vaultk8s.plan.phases import CARotationPhase
from vaultk8s.plan.naming import (CROSS_PREFIX, RETIRED_PREFIX, cross_name, generation_of, intermediate_name,
                                  retired_name, retired_until_of, root_name)

ISSUING = "issuing-certificates"
RETIRED_USAGE = "crl-signing,ocsp-signing,read-only"
RETIRED_USAGE_NO_CRL = "ocsp-signing,read-only"


def retired_usage(cert: x509.Certificate) -> str:
    """What a retired issuer may still do: sign CRLs only when its certificate allows cRLSign.
    kubeadm's CAs do not, and Vault refuses crl-signing for them (docs/adopt-facts.md, 15)."""
    try:
        crl_sign = cert.extensions.get_extension_for_class(x509.KeyUsage).value.crl_sign
    except x509.ExtensionNotFound:
        crl_sign = True  # no KeyUsage: every usage is allowed
    return RETIRED_USAGE if crl_sign else RETIRED_USAGE_NO_CRL
SHOWN_LEAVES = 5  # a refusal names this many leaves, then counts the rest


class State(str, Enum):
    IDLE = "idle"  # one signing root (after bootstrap, or after a finished rotation)
    STAGED = "staged"  # a newer root exists and is trusted; the old one still signs
    SWITCHED = "switched"  # the newer root signs; the old one is still trusted


@dataclass(frozen=True)
class IssuerView:
    id: str
    name: str
    cert: x509.Certificate
    key_id: str | None  # None: a keyless issuer (a chain certificate only)
    usage: frozenset[str]
    manual_chain: tuple[str, ...] = ()
    default: bool = False

    @property
    def generation(self) -> int:
        return generation_of(self.name)

    @property
    def is_cross(self) -> bool:
        return self.name.startswith(CROSS_PREFIX)

    @property
    def is_retired(self) -> bool:
        return self.name.startswith(RETIRED_PREFIX)

    @property
    def retired_until(self) -> datetime | None:
        return retired_until_of(self.name)


@dataclass(frozen=True)
class LeafView:
    target: str  # <node>/pki/<file>
    cert: x509.Certificate


@dataclass(frozen=True)
class Rotation:
    """A mount's rotation state: current is the default issuer; old/new are set while rotating."""

    state: State
    current: IssuerView
    old: IssuerView | None = None
    new: IssuerView | None = None
    cross: IssuerView | None = None
    retired: tuple[IssuerView, ...] = ()

    @property
    def next_generation(self) -> int:
        return max((self.new or self.current).generation, self.current.generation) + 1


def anchor_of(issuer: IssuerView, issuers: list[IssuerView]) -> IssuerView | None:
    """The self-signed root above a signing issuer: itself (Vault mode), or the keyless HSM root
    that signed its intermediate."""
    if crypto.is_self_signed(issuer.cert):
        return issuer
    return next((i for i in issuers if not i.is_cross and i is not issuer and crypto.is_self_signed(i.cert)
                 and crypto.signed_by(issuer.cert, i.cert)), None)


def _chain(first: IssuerView, issuers: list[IssuerView], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    anchor = anchor_of(first, issuers)
    ids = (first.id,) if anchor is None or anchor is first else (first.id, anchor.id)
    return ids + tuple(i for i in extra if i not in ids)


def staged_chain(rotation: Rotation, issuers: list[IssuerView]) -> tuple[str, ...]:
    """The old issuer's chain while staged: its own, then the new root (so bundles hold both)."""
    new_anchor = anchor_of(rotation.new, issuers)
    return _chain(rotation.old, issuers, (new_anchor.id,) if new_anchor else ())


def vault_root_under_hsm(rotation: Rotation, hsm: bool) -> bool:
    """HSM mode rotating away from a root whose key is in Vault (an adopted kubeadm CA): the token
    holds no old root to cross-sign with, so Vault's old root signs the new token root."""
    old = rotation.old or rotation.current
    return hsm and old.key_id is not None and crypto.is_self_signed(old.cert)


def retired_chain(rotation: Rotation, issuers: list[IssuerView]) -> tuple[str, ...]:
    """The new issuer's chain after retire: up to its own root only, no cross-signed certificate."""
    return _chain(rotation.new, issuers)


def classify(mount: str, issuers: list[IssuerView]) -> Rotation:
    defaults = [i for i in issuers if i.default]
    if not defaults:
        raise PlanRefused(f"{mount} has no default issuer: run `vaultk8s bootstrap` first")
    current = defaults[0]
    signing = [i for i in issuers if i.key_id and not i.is_cross and not i.is_retired and i is not current]
    retired = tuple(i for i in issuers if i.is_retired)
    newer = [i for i in signing if i.generation > current.generation]
    older = [i for i in signing if i.generation < current.generation]
    if len(newer) > 1 or len(older) > 1 or (newer and older):
        names = ", ".join(sorted(i.name or i.id for i in newer + older))
        raise PlanRefused(f"{mount} holds more than one rotation's roots ({names}): remove the stray issuer")
    if newer:
        return Rotation(State.STAGED, current, old=current, new=newer[0],
                        cross=_cross_of(issuers, newer[0]), retired=retired)
    if older:
        return Rotation(State.SWITCHED, current, old=older[0], new=current,
                        cross=_cross_of(issuers, current), retired=retired)
    return Rotation(State.IDLE, current, retired=retired)


def _cross_of(issuers: list[IssuerView], new: IssuerView) -> IssuerView | None:
    return next((i for i in issuers if i.name == cross_name(new.generation)), None)


def leaf_owner(leaf: x509.Certificate, issuers: list[IssuerView]) -> IssuerView | None:
    """The issuer whose key signed the leaf; a root, not its cross-signed twin with the same key."""
    for issuer in sorted(issuers, key=lambda i: i.is_cross):
        if issuer.key_id and crypto.signed_by(leaf, issuer.cert):
            return issuer
    return None


def leaves_by_issuer(leaves: list[LeafView], issuers: list[IssuerView]) -> dict[str, list[str]]:
    """{issuer id (or "unknown"): [leaf targets]} for the leaves found under --out."""
    counts: dict[str, list[str]] = {}
    for leaf in leaves:
        owner = leaf_owner(leaf.cert, issuers)
        counts.setdefault(owner.id if owner else "unknown", []).append(leaf.target)
    return counts


@dataclass(frozen=True)
class RotationPlan:
    rotation: Rotation
    actions: list[Action] = field(default_factory=list)
    stranded: tuple[str, ...] = ()  # leaves --force leaves on the old root
    converge_leaves: bool = False  # switch: re-issue every leaf not from the current root
    retired_as: str | None = None  # retire: the old root's new name (it records the deletion time)


def plan_rotation(mount: str, ca_label: str, phase: CARotationPhase, issuers: list[IssuerView], leaves: list[LeafView],
                  now: datetime, leaf_ttl: timedelta, force: bool = False, hsm: bool = False) -> RotationPlan:
    """hsm: roots in the token, so stage makes a new token root and a new Vault intermediate."""
    rotation = classify(mount, issuers)
    if phase is CARotationPhase.STAGE:
        return RotationPlan(rotation, _plan_stage(mount, ca_label, rotation, issuers, hsm))
    if phase is CARotationPhase.SWITCH:
        return RotationPlan(rotation, _plan_switch(mount, ca_label, rotation, issuers), converge_leaves=True)
    return _plan_retire(mount, ca_label, rotation, issuers, leaves, now, leaf_ttl, force)


def _plan_stage(mount: str, ca_label: str, rotation: Rotation, issuers: list[IssuerView], hsm: bool) -> list[Action]:
    if rotation.state is State.SWITCHED:
        raise PlanRefused(f"{ca_label}: already switched to {rotation.new.name}; finish this rotation with "
                          "--phase retire before staging another")
    if rotation.state is State.IDLE:
        gen = rotation.next_generation
        first = (Action("hsm-generation", f"{mount}/issuer/{intermediate_name(gen)}",
                        "new root in the token (non-extractable key) and a new intermediate it signs")
                 if hsm else
                 Action("generate-root", f"{mount}/issuer/{root_name(gen)}", "new root in the same mount, key in Vault"))
        actions = [
            first,
            Action("cross-sign", f"{mount}/issuer/{cross_name(gen)}",
                   f"{rotation.current.name} signs the new key: clients trusting only the old root accept it"),
            Action("chain-issuer", f"{mount}/issuer/{rotation.current.name}",
                   "default chain lists the new root: every trust bundle becomes old + new"),
        ]
        return actions
    actions = []
    old, new = rotation.old, rotation.new
    if rotation.cross is None:
        actions.append(Action("cross-sign", f"{mount}/issuer/{cross_name(new.generation)}",
                              f"{old.name} signs the new key (missing from an interrupted stage)"))
    if old.manual_chain != staged_chain(rotation, issuers):
        actions.append(Action("chain-issuer", f"{mount}/issuer/{old.name}",
                              "default chain lists the new root: every trust bundle becomes old + new"))
    return actions


def _plan_switch(mount: str, ca_label: str, rotation: Rotation, issuers: list[IssuerView]) -> list[Action]:
    if rotation.state is State.IDLE:
        if rotation.current.generation > 1:
            return []  # a finished rotation: only leaves left behind are re-issued
        raise PlanRefused(f"{ca_label}: nothing staged; run --phase stage first")
    if rotation.state is State.SWITCHED:
        return []
    if rotation.cross is None or rotation.old.manual_chain != staged_chain(rotation, issuers):
        raise PlanRefused(f"{ca_label}: stage did not finish; re-run --phase stage first")
    return [Action("set-default", f"{mount}/config/issuers",
                   f"{rotation.new.name} signs from now on; every leaf is re-issued with the cross-signed chain")]


def _plan_retire(mount: str, ca_label: str, rotation: Rotation, issuers: list[IssuerView],
                 leaves: list[LeafView], now: datetime, leaf_ttl: timedelta, force: bool) -> RotationPlan:
    cleanup = _expired_retired(mount, rotation, issuers, now)
    if rotation.state is State.STAGED:
        raise PlanRefused(f"{ca_label}: not switched yet; run --phase switch first")
    if rotation.state is State.IDLE:
        if rotation.current.generation > 1 or rotation.retired:
            return RotationPlan(rotation, cleanup)
        raise PlanRefused(f"{ca_label}: no rotation in progress; nothing to retire")
    old, new = rotation.old, rotation.new
    on_old = sorted(leaves_by_issuer(leaves, issuers).get(old.id, []))
    if on_old and not force:
        shown = ", ".join(on_old[:SHOWN_LEAVES]) + (f" and {len(on_old) - SHOWN_LEAVES} more"
                                                     if len(on_old) > SHOWN_LEAVES else "")
        raise PlanRefused(f"{ca_label}: {len(on_old)} certificate(s) under --out still chain to {old.name}: {shown}; "
                          "run --phase switch (or bootstrap) again, or --force to strand them")
    latest = max([now + leaf_ttl] + [leaf.cert.not_valid_after_utc for leaf in leaves
                                     if leaf.target in on_old])
    retired_as = retired_name(old.generation, latest)
    actions = [
        Action("chain-issuer", f"{mount}/issuer/{new.name}",
               "chain is the new root alone: every trust bundle drops the old root"),
        Action("retire-issuer", f"{mount}/issuer/{old.name}",
               f"stops issuing; renamed {retired_as}, deleted after its last leaf expires"),
    ]
    if rotation.cross is not None:
        actions.append(Action("delete-issuer", f"{mount}/issuer/{rotation.cross.name}",
                              "cross-signed certificate no longer needed (leaves keep their copy)"))
    return RotationPlan(rotation, actions + cleanup, stranded=tuple(on_old), retired_as=retired_as)


def _expired_retired(mount: str, rotation: Rotation, issuers: list[IssuerView], now: datetime) -> list[Action]:
    actions = []
    for issuer in rotation.retired:
        until = issuer.retired_until
        if until is None or now < until:
            continue
        actions.append(Action("delete-issuer", f"{mount}/issuer/{issuer.name}",
                              f"retired, and every leaf it signed expired by {until:%Y-%m-%d %H:%M} UTC"))
        if issuer.key_id and not any(i.key_id == issuer.key_id for i in issuers if i is not issuer):
            actions.append(Action("delete-key", f"{mount}/key/{issuer.key_id}", "its only issuer is deleted"))
    return actions


def next_step(rotation: Rotation) -> str:
    if rotation.state is State.STAGED:
        return "switch (after every component trusts the new root: restart those that do not reload)"
    if rotation.state is State.SWITCHED:
        return "retire (after every leaf moved; `ca status` counts what is left)"
    return "stage (to rotate)"
