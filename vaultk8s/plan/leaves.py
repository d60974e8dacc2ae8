"""Decide, per leaf certificate, whether it must be (re-)issued. Pure: the clock is a parameter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509

from vaultk8s import crypto
from vaultk8s.plan.resolve import ResolvedCert
from vaultk8s.plan.schedule import RENEW_FRACTION

UNHEALTHY_FRACTION = 9 / 10  # /healthz fails in the last tenth: renewal has been failing for long


@dataclass(frozen=True)
class ObservedLeaf:
    """What is on disk for one resolved cert; None fields are missing or unreadable."""

    cert: x509.Certificate | None
    key: crypto.PrivateKey | None


def renewal_time(not_before: datetime, not_after: datetime, fraction: float = RENEW_FRACTION) -> datetime:
    return not_before + (not_after - not_before) * fraction


def leaf_health(observed: ObservedLeaf, now: datetime) -> str | None:
    """Why a certificate on disk is not fit to serve (the agent's /healthz), or None."""
    cert = observed.cert
    if cert is None:
        return "missing"
    if observed.key is None:
        return "key missing"
    if not crypto.key_matches(cert, observed.key):
        return "key does not match certificate"
    if now < cert.not_valid_before_utc:
        return f"not valid before {_stamp(cert.not_valid_before_utc)}"
    if now >= cert.not_valid_after_utc:
        return f"expired at {_stamp(cert.not_valid_after_utc)}"
    if now >= renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc, UNHEALTHY_FRACTION):
        return f"in the last tenth of its life (expires {_stamp(cert.not_valid_after_utc)})"
    return None


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def reissue_reason(desired: ResolvedCert, observed: ObservedLeaf, issuers: list[x509.Certificate],
                   now: datetime, force: bool = False) -> str | None:
    """Why this leaf must be issued again, or None to keep it."""
    if observed.cert is None:
        return "missing"
    if observed.key is None:
        return "key missing"
    if force:
        return "forced renewal"
    cert = observed.cert
    if not crypto.key_matches(cert, observed.key):
        return "key does not match certificate"
    if not any(crypto.signed_by(cert, issuer) for issuer in issuers):
        return "not issued by the current CA"
    mismatch = catalog_mismatch(desired, crypto.facts(cert))
    if mismatch:
        return mismatch
    if now >= cert.not_valid_after_utc:
        return "expired"
    if now >= renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc):
        return "in renewal window"
    return None


def catalog_mismatch(desired: ResolvedCert, facts: crypto.CertFacts) -> str | None:
    """The first way a certificate differs from its catalog entry, or None."""
    want_orgs = (desired.organization,) if desired.organization else ()
    checks = (
        ("CN", facts.common_name, desired.common_name),
        ("O", facts.organizations, want_orgs),
        ("DNS SANs", facts.dns_sans, frozenset(desired.dns_sans)),
        ("IP SANs", facts.ip_sans, frozenset(desired.ip_sans)),
        ("extended key usage", facts.usages, desired.usages),
        ("key type", facts.key_type, desired.key_type),
    )
    for what, have, want in checks:
        if have != want:
            return f"{what} changed"
    return None
