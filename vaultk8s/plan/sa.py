"""The service-account key set: the rotation state machine and its KV document.

Pure: no Vault, no files, and the clock is a parameter (the settings are config.service_account).
A key moves staged -> active -> previous -> retired; kube-apiserver verifies with every staged,
active and previous public key (sa.pub) and signs with the one active key (sa.key).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from vaultk8s import crypto
from vaultk8s.durations import hours_minutes
from vaultk8s.errors import PlanRefused
from vaultk8s.plan.phases import SARotationPhase

DOCUMENT_SCHEMA = 1
# max_versions on the key-set secret: one rotation's states (before stage, staged, promoted) stay
# readable for `bao kv rollback` until retire; retire destroys them (destroy_after_retire). It also
# bounds how long a private key could linger in history if that destroy never ran.
KV_MAX_VERSIONS = 3


class KeyState(str, Enum):
    STAGED = "staged"  # in sa.pub only: verifiers learn it before anything is signed with it
    ACTIVE = "active"  # sa.key: signs new tokens; also in sa.pub
    PREVIOUS = "previous"  # in sa.pub until every token it signed has expired
    RETIRED = "retired"  # nowhere on disk; its private key is dropped


@dataclass(frozen=True)
class SAKey:
    id: str  # kube-apiserver's kid: base64url(sha256(PKIX DER of the public key))
    key_type: str
    state: KeyState
    created: datetime
    public_pem: str
    private_pem: str | None = field(default=None, repr=False)  # never printed
    activated: datetime | None = None
    deactivated: datetime | None = None  # became previous: the grace period starts here
    retired: datetime | None = None


@dataclass(frozen=True)
class KeySet:
    keys: tuple[SAKey, ...] = ()

    def with_state(self, *states: KeyState) -> tuple[SAKey, ...]:
        return tuple(k for k in self.keys if k.state in states)

    @property
    def active(self) -> SAKey:
        return self.with_state(KeyState.ACTIVE)[0]

    @property
    def staged(self) -> SAKey | None:
        staged = self.with_state(KeyState.STAGED)
        return staged[0] if staged else None

    @property
    def verifying(self) -> tuple[SAKey, ...]:
        """Keys whose public half belongs in sa.pub: active first, then staged, then previous."""
        order = {KeyState.ACTIVE: 0, KeyState.STAGED: 1, KeyState.PREVIOUS: 2}
        live = [k for k in self.keys if k.state in order]
        return tuple(sorted(live, key=lambda k: order[k.state]))


# --- keys ---------------------------------------------------------------------------------------

def jwt_kid(public_key) -> str:
    """The `kid` kube-apiserver puts in the JWT header of tokens this key signs (its SAKey.id)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def new_key(private: crypto.PrivateKey, now: datetime, state: KeyState = KeyState.STAGED) -> SAKey:
    public = private.public_key()
    return SAKey(
        id=jwt_kid(public), key_type=crypto.key_type_of(public), state=state, created=now,
        public_pem=public.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        private_pem=crypto.key_pem(private).decode(),
        activated=now if state is KeyState.ACTIVE else None,
    )


def initial(first: SAKey, now: datetime) -> KeySet:
    """The key set bootstrap creates: one key, active at once (nothing to verify yet)."""
    return KeySet((replace(first, state=KeyState.ACTIVE, activated=now),))


def pub_pem(keys: KeySet) -> bytes:
    return "".join(k.public_pem.strip() + "\n" for k in keys.verifying).encode()


def key_pem(keys: KeySet) -> bytes:
    return keys.active.private_pem.encode()


# --- the state machine --------------------------------------------------------------------------

def stage(state: KeySet, new: SAKey | None, now: datetime) -> KeySet:
    """Add a verification-only key. A no-op when a key is already staged (new may then be None)."""
    if state.staged is not None:
        return state
    if new is None:
        raise ValueError("stage needs a new key")
    previous = state.with_state(KeyState.PREVIOUS)
    if previous:
        raise PlanRefused(
            f"cannot stage: key {previous[0].id[:12]} from the last rotation is still accepted; "
            "run `vaultk8s sa rotate --phase retire` first (add --force before its grace period ends)"
        )
    if any(k.id == new.id for k in state.keys):
        raise PlanRefused("cannot stage: the new key equals an existing one")
    return KeySet(state.keys + (replace(new, state=KeyState.STAGED, created=now),))


def promote(state: KeySet, now: datetime) -> KeySet:
    """Make the staged key the signing key; the old one stays verifiable as previous."""
    staged = state.staged
    if staged is None:
        if state.with_state(KeyState.PREVIOUS):
            return state  # already promoted
        raise PlanRefused("cannot promote: no key is staged; run `vaultk8s sa rotate --phase stage` first")
    old = state.active
    keys = []
    for k in state.keys:
        if k.id == staged.id:
            k = replace(k, state=KeyState.ACTIVE, activated=now)
        elif k.id == old.id:
            k = replace(k, state=KeyState.PREVIOUS, deactivated=now)
        keys.append(k)
    return KeySet(tuple(keys))


def retire(state: KeySet, now: datetime, grace: timedelta, force: bool = False) -> KeySet:
    """Drop previous keys from sa.pub once every token they signed has expired."""
    previous = state.with_state(KeyState.PREVIOUS)
    if not previous:
        if state.staged is not None:
            raise PlanRefused("cannot retire: the staged key is not promoted yet; "
                              "run `vaultk8s sa rotate --phase promote` first")
        return state  # nothing left to retire
    early = [k for k in previous if now < retire_after(k, grace)]
    if early and not force:
        k = early[0]
        left = retire_after(k, grace) - now
        raise PlanRefused(
            f"cannot retire key {k.id[:12]}: tokens it signed may be valid until "
            f"{retire_after(k, grace):%Y-%m-%d %H:%M} UTC (grace period {hours_minutes(grace)}, "
            f"{hours_minutes(left)} left); wait, or pass --force to break those tokens"
        )
    ids = {k.id for k in previous}
    return KeySet(tuple(
        replace(k, state=KeyState.RETIRED, retired=now, private_pem=None) if k.id in ids else k
        for k in state.keys
    ))


def apply_phase(state: KeySet, phase: SARotationPhase, now: datetime, grace: timedelta,
                new: SAKey | None = None, force: bool = False) -> KeySet:
    if phase is SARotationPhase.STAGE:
        return stage(state, new, now)
    if phase is SARotationPhase.PROMOTE:
        return promote(state, now)
    return retire(state, now, grace, force)


@dataclass(frozen=True)
class StoredVersion:
    """One entry of the secret's KV v2 version history (its metadata: no data, no key material)."""
    version: int
    destroyed: bool
    deleted: bool = False  # soft-deleted: the data is still there (undelete), so it still counts


def cleans_history(state: KeySet) -> bool:
    """A retired state: some key retired, none previous or staged. Only then is history destroyed."""
    return bool(state.with_state(KeyState.RETIRED)) and not state.with_state(KeyState.PREVIOUS, KeyState.STAGED)


def destroy_after_retire(state: KeySet, current: int, history: tuple[StoredVersion, ...]) -> tuple[int, ...]:
    """The versions retire must destroy: every one older than `current` whose data still exists.

    `state` is the key set stored at `current`. Only a retired state (keys retired, none previous)
    destroys anything: then every older version holds a private key that must never sign again
    (the retired key was staged, active or previous in each version since the last retire; earlier
    ones were destroyed by that retire), so older versions are destroyed as a whole rather than read
    one by one, which would fetch those private keys once more. Versions newer than `current`
    (another operator's later write) are never touched.
    """
    if not cleans_history(state):
        return ()
    return tuple(sorted(v.version for v in history if 0 < v.version < current and not v.destroyed))


def retire_after(key: SAKey, grace: timedelta) -> datetime:
    return (key.deactivated or key.created) + grace


def next_step(state: KeySet) -> str:
    if state.staged is not None:
        return "promote (after every kube-apiserver has loaded the new sa.pub)"
    if state.with_state(KeyState.PREVIOUS):
        return "retire (after the grace period)"
    return "stage (to begin a rotation)"


# --- the KV document ----------------------------------------------------------------------------

_TIMES = ("created", "activated", "deactivated", "retired")


def to_document(state: KeySet) -> dict[str, Any]:
    keys = []
    for k in state.keys:
        item: dict[str, Any] = {"id": k.id, "key_type": k.key_type, "state": k.state.value,
                                "public_pem": k.public_pem}
        for name in _TIMES:
            value = getattr(k, name)
            if value is not None:
                item[name] = value.isoformat()
        if k.private_pem is not None:
            item["private_pem"] = k.private_pem
        keys.append(item)
    return {"schema": DOCUMENT_SCHEMA, "keys": keys}


def from_document(doc: Any) -> KeySet:
    """Parse and check the stored key set. ValueError messages never quote key material."""
    if not isinstance(doc, dict) or doc.get("schema") != DOCUMENT_SCHEMA or not isinstance(doc.get("keys"), list):
        raise ValueError(f"not a vaultk8s key set (schema {DOCUMENT_SCHEMA} with a list of keys)")
    keys = tuple(_key_from_item(item, index) for index, item in enumerate(doc["keys"], 1))
    state = KeySet(keys)
    if len(state.with_state(KeyState.ACTIVE)) != 1:
        raise ValueError("it must hold exactly one active key")
    if len(state.with_state(KeyState.STAGED)) > 1:
        raise ValueError("it holds more than one staged key")
    if len({k.id for k in keys}) != len(keys):
        raise ValueError("it holds the same key twice")
    return state


def _key_from_item(item: Any, index: int) -> SAKey:
    where = f"key #{index}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not a mapping")
    try:
        state = KeyState(item.get("state"))
    except ValueError:
        raise ValueError(f"{where} has an unknown state") from None
    try:
        public = serialization.load_pem_public_key(str(item.get("public_pem", "")).encode())
    except (ValueError, TypeError):
        raise ValueError(f"{where} has an unreadable public key") from None
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise ValueError(f"{where} is neither RSA nor ECDSA")
    private_pem = item.get("private_pem")
    if state is not KeyState.RETIRED:
        _check_private(private_pem, public, where)
    times = {}
    for name in _TIMES:
        try:
            times[name] = datetime.fromisoformat(item[name]) if item.get(name) else None
        except (TypeError, ValueError):
            raise ValueError(f"{where} has an unreadable {name} time") from None
    if times["created"] is None:
        raise ValueError(f"{where} has no created time")
    return SAKey(id=jwt_kid(public), key_type=crypto.key_type_of(public), state=state,
                 public_pem=str(item["public_pem"]), private_pem=private_pem, **times)


def _check_private(private_pem: Any, public, where: str) -> None:
    try:
        private = crypto.load_key(str(private_pem or "").encode())
    except (ValueError, TypeError):
        raise ValueError(f"{where} has an unreadable private key") from None
    if private.public_key().public_numbers() != public.public_numbers():
        raise ValueError(f"{where}'s private key does not match its public key")
