"""`vaultk8s status`: everything of a cluster that expires, when it is due, soonest first. Pure.

ops/status.py gathers the facts (files under --out, issuers, the service-account key set,
secret_ids, tokens); this module classifies and orders them and decides what is *due*:
- renewed automatically (leaves: the agent, the signer; the signer's own AppRole secret_id): due in
  the last third of its life, or expired;
- renewed by a person (CAs, the active service-account key, Vault's
  own listener certificate and the CA file that trusts it): due when it lapses within --warn;
- a deadline to act on (a previous service-account key: retire it): due once reached;
- meant to lapse (enrolment secret_ids, short-lived tokens): listed, never due.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from vaultk8s.config import SASettings
from vaultk8s.plan import sa
from vaultk8s.plan.naming import RETIRED_PREFIX
from vaultk8s.plan.schedule import RENEW_FRACTION

LEAF = "leaf"
CA_ROOT = "ca-root"
CA_INTERMEDIATE = "ca-intermediate"
CA_CROSS_SIGNED = "ca-cross-signed"
SA_KEY = "sa-key"
ENROLMENT = "enrolment"
SIGNER_CREDENTIAL = "signer-credential"
TOKEN = "token"
VAULT_TLS = "vault-tls"
VAULT_CA = "vault-ca"

DEFAULT_WARN = timedelta(days=30)


class Renewal(str, Enum):
    AUTOMATIC = "automatic"
    PERSON = "person"
    DEADLINE = "deadline"
    LAPSES = "lapses"


@dataclass(frozen=True)
class Lifetime:
    kind: str
    name: str
    not_after: datetime | None  # None: Vault gives it no end
    renewal: Renewal
    renewed_by: str
    detail: str = ""
    not_before: datetime | None = None  # automatic renewal: its window opens at RENEW_FRACTION of the life
    warning: str = ""  # what to act on besides the date: becomes one of the report's notes


def is_due(item: Lifetime, now: datetime, warn: timedelta) -> bool:
    if item.not_after is None or item.renewal is Renewal.LAPSES:
        return False
    if item.renewal is Renewal.PERSON:
        return item.not_after - now <= warn
    if item.renewal is Renewal.AUTOMATIC and item.not_before is not None:
        return now >= item.not_before + (item.not_after - item.not_before) * RENEW_FRACTION
    return now >= item.not_after


@dataclass(frozen=True)
class StatusReport:
    items: tuple[Lifetime, ...]
    due: tuple[bool, ...]  # per item
    warn: timedelta
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def due_items(self) -> tuple[Lifetime, ...]:
        return tuple(i for i, d in zip(self.items, self.due) if d)

    def to_dict(self) -> dict[str, Any]:
        return {"items": [_item_dict(i, d) for i, d in zip(self.items, self.due)],
                "due": [i.name for i in self.due_items], "warn_seconds": int(self.warn.total_seconds()),
                "notes": list(self.notes)}


def _item_dict(item: Lifetime, due: bool) -> dict[str, Any]:
    return {"kind": item.kind, "name": item.name, "not_after": rfc3339(item.not_after),
            "renewed_by": item.renewed_by, "renewal": item.renewal.value, "due": due, "detail": item.detail}


def rfc3339(when: datetime | None) -> str | None:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if when is not None else None


def plan_status(items: list[Lifetime], now: datetime, warn: timedelta, notes: list[str] = ()) -> StatusReport:
    """Soonest first (no end last), then by kind and name, so the output is stable."""
    never = datetime.max.replace(tzinfo=timezone.utc)
    ordered = tuple(sorted(items, key=lambda i: (i.not_after or never, i.kind, i.name)))
    warnings = tuple(f"{i.name}: {i.warning}" for i in ordered if i.warning)
    return StatusReport(ordered, tuple(is_due(i, now, warn) for i in ordered), warn, (*notes, *warnings))


# --- service-account keys -----------------------------------------------------------------------

def sa_key_lifetimes(keys: sa.KeySet, settings: SASettings) -> list[Lifetime]:
    """By age against policy: the active (and a staged) key `max_age` after activation (creation),
    a previous key at its retire time. Retired keys are gone from sa.pub: not listed."""
    where = f"{settings.kv_mount}/data/{settings.kv_path}"
    items = []
    for key in keys.keys:
        name = f"{where}#{key.id[:12]}"
        if key.state is sa.KeyState.PREVIOUS:
            items.append(Lifetime(SA_KEY, name, sa.retire_after(key, settings.grace_period), Renewal.DEADLINE,
                                  "vaultk8s sa rotate --phase retire", "previous key: in sa.pub until retired"))
        elif key.state in (sa.KeyState.ACTIVE, sa.KeyState.STAGED):
            items.append(Lifetime(SA_KEY, name, (key.activated or key.created) + settings.max_age, Renewal.PERSON,
                                  "vaultk8s sa rotate", f"{key.state.value} key, {key.key_type}: rotate after "
                                  "service_account.max_age"))
    return items


# --- issuers --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IssuerFacts:
    mount: str
    issuer_id: str
    issuer_name: str
    key_id: str  # "" for a keyless issuer (HSM mode: the root's key is in the token)
    self_signed: bool
    subject: str
    not_after: datetime
    is_default: bool
    serial: int


def issuer_lifetimes(issuers: list[IssuerFacts]) -> list[Lifetime]:
    """Every issuer of a mount (every rotation generation): a root, an intermediate (HSM mode), or a
    cross-signed certificate (a newer root's key, signed by an older root: `ca rotate`)."""
    root_keys = {i.key_id for i in issuers if i.self_signed and i.key_id}
    return [Lifetime(_issuer_kind(i, root_keys), f"{i.mount}/issuer/{i.issuer_name or i.issuer_id}", i.not_after,
                     Renewal.PERSON, "vaultk8s ca rotate", _issuer_detail(i), warning=_serial_warning(i))
            for i in issuers]


def _serial_warning(issuer: IssuerFacts) -> str:
    """kubeadm's CAs have serial 0 (docs/adopt-facts.md, 2): adopted, they stay the roots until rotated.
    A retired root is in no bundle any more; Vault keeps it only until its last leaf expires."""
    if issuer.serial > 0 or issuer.issuer_name.startswith(RETIRED_PREFIX):
        return ""
    return (f"serial number {issuer.serial} (kubeadm makes its CAs so): RFC 5280 forbids it and a future "
            "cryptography release will refuse to load it; retire it with `vaultk8s ca rotate` (docs/adopt.md)")


def _issuer_kind(issuer: IssuerFacts, root_keys: set[str]) -> str:
    if issuer.self_signed:
        return CA_ROOT
    return CA_CROSS_SIGNED if issuer.key_id in root_keys else CA_INTERMEDIATE


def _issuer_detail(issuer: IssuerFacts) -> str:
    parts = [issuer.subject]
    if issuer.self_signed and not issuer.key_id:
        parts.append("HSM root: its key is in the PKCS#11 token")
    if issuer.is_default:
        parts.append("default issuer")
    return "; ".join(p for p in parts if p)


# --- Vault's times --------------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d{6})\d+")


def vault_time(text: Any) -> datetime | None:
    """Vault's RFC 3339 times (nanoseconds, Z); None for its "no end" zero time or anything unreadable."""
    if not isinstance(text, str) or not text or text.startswith("0001-01-01"):
        return None
    try:
        when = datetime.fromisoformat(_FRACTION.sub(r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
