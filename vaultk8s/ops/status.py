"""`vaultk8s status`: gather every lifetime of a cluster (I/O); plan/status.py classifies and orders.

Sources, each read with the caller's token; one the token may not read becomes a note naming the
permission, never a failure of the whole report:
- leaves under --out (ops/check.py reads them);
- every issuer of the three CA mounts (every rotation generation);
- the service-account key set (KV: an operator or admin token);
- each node's and the CSR signer's AppRole secret_ids (by accessor: the secret_ids are never read);
- tokens carrying this cluster's policies (listing token accessors needs sudo: root or admin);
- the certificate each known Vault node serves, and VAULT_CACERT's (no token needed; vaultk8s renews
  neither, and every agent and signer stops when one lapses).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable, TYPE_CHECKING

from vaultk8s import catalog, crypto
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PermissionDeniedError, VaultError, VaultK8sError
from vaultk8s.ops import check
from vaultk8s.ops import sa as sa_ops
from vaultk8s.plan import grants, naming
from vaultk8s.plan import status as plan
from vaultk8s.plan.status import Lifetime, Renewal

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

MAX_TOKEN_LOOKUPS = 5000  # a shared Vault may hold many more tokens than this cluster's


def status(config: ClusterConfig, gateway: VaultGateway, *, now: datetime, warn: timedelta,
           out: Path | None = None) -> plan.StatusReport:
    gateway.check_ready()
    items: list[Lifetime] = []
    notes: list[str] = []
    if out is not None:
        items += leaf_lifetimes(out, now)
    else:
        notes.append("leaves: not listed (give --out DIR)")
    sources: list[tuple[str, Callable[[], list[Lifetime]]]] = [
        ("CA issuers", lambda: issuer_lifetimes(config, gateway)),
        ("service-account keys", lambda: sa_key_lifetimes(config, gateway)),
        ("secret_ids", lambda: secret_id_lifetimes(config, gateway)),
    ]
    for what, gather in sources:
        try:
            items += gather()
        except PermissionDeniedError as err:
            notes.append(f"{what}: not listed: {err}")
    found, note = token_lifetimes(config, gateway)
    items += found
    notes += [note] if note else []
    found, tls_notes = vault_tls_lifetimes(gateway)
    return plan.plan_status(items + found, now, warn, notes + tls_notes)


def leaf_lifetimes(out: Path, now: datetime) -> list[Lifetime]:
    cas = {ca.cert_file for ca in catalog.CAS}
    return [Lifetime(plan.LEAF, f"{row.node}/{catalog.PKI_DIR}/{row.file}", row.not_after, Renewal.AUTOMATIC,
                     "vaultk8s agent (or the signer, for kubelet certificates)",
                     "; ".join((row.subject, *row.problems)).strip("; "), row.not_before)
            for row in check.check_out_dir(out, now) if row.file not in cas and row.not_after is not None]


def issuer_lifetimes(config: ClusterConfig, gateway: VaultGateway) -> list[Lifetime]:
    """Every issuer of the three mounts: PKI lists issuers (with key_id) and serves their
    certificates without a token, so any caller sees them."""
    facts = []
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        for issuer_id, info in sorted(gateway.list_issuers(mount).items()):
            pem = gateway.read_issuer_certificate(mount, issuer_id)
            if pem:
                facts.append(_issuer_facts(mount, issuer_id, info, pem))
    return plan.issuer_lifetimes(facts)


def _issuer_facts(mount: str, issuer_id: str, info: dict, pem: str) -> plan.IssuerFacts:
    cert = crypto.load_certs(pem)[0]
    return plan.IssuerFacts(mount, issuer_id, info.get("issuer_name") or "", info.get("key_id") or "",
                            crypto.is_self_signed(cert), cert.subject.rfc4514_string(), cert.not_valid_after_utc,
                            bool(info.get("is_default")), cert.serial_number)


def sa_key_lifetimes(config: ClusterConfig, gateway: VaultGateway) -> list[Lifetime]:
    settings = config.service_account
    stored = sa_ops.read_key_set(gateway, settings) if gateway.kv_version(settings.kv_mount) == "2" else None
    return plan.sa_key_lifetimes(stored.keys, settings) if stored is not None else []


def secret_id_lifetimes(config: ClusterConfig, gateway: VaultGateway) -> list[Lifetime]:
    """Each node's enrolment secret_ids (meant to lapse) and the signer's AppRole secret_ids (the signer
    replaces its own at 2/3 of its life: one past that is not being replaced)."""
    am = naming.approle_mount(config)
    roles = [(naming.approle_role(n.name), plan.ENROLMENT, Renewal.LAPSES, f"node {n.name}",
              "vaultk8s node credentials") for n in config.nodes]
    roles.append((naming.CSR_SIGNER_APPROLE_ROLE, plan.SIGNER_CREDENTIAL, Renewal.AUTOMATIC, grants.CSR_SIGNER,
                  "vaultk8s signer (at 2/3 of its life)"))
    items = []
    for role, kind, renewal, who, renewed_by in roles:
        for accessor in gateway.list_secret_id_accessors(am, role):
            data = gateway.lookup_secret_id_accessor(am, role, accessor)
            if data is None:
                continue
            uses = data.get("secret_id_num_uses") or 0
            items.append(Lifetime(kind, f"auth/{am}/role/{role} secret_id {accessor[:8]}",
                                  plan.vault_time(data.get("expiration_time")), renewal, renewed_by,
                                  f"{who}: AppRole secret_id, {'unlimited' if not uses else uses} use(s) left",
                                  not_before=plan.vault_time(data.get("creation_time"))))
    return items


def token_lifetimes(config: ClusterConfig, gateway: VaultGateway) -> tuple[list[Lifetime], str | None]:
    """Tokens holding this cluster's policies, when the caller may list token accessors."""
    try:
        accessors = gateway.list_token_accessors()
    except PermissionDeniedError:
        return [], ("tokens: not listed: listing auth/token/accessors needs `list` with `sudo` there (root or "
                    "an admin policy); the operator policy does not grant it, as it would show every token")
    ours = {naming.policy_name(config, kind) for kind in grants.policy_kinds()}
    items = []
    for accessor in accessors[:MAX_TOKEN_LOOKUPS]:
        data = gateway.lookup_token_accessor(accessor)
        policies = set((data or {}).get("policies") or [])
        if not policies & ours:
            continue
        items.append(Lifetime(plan.TOKEN, f"token {accessor[:8]} ({data.get('display_name') or '-'})",
                              plan.vault_time(data.get("expire_time")), Renewal.LAPSES, "its holder logs in again",
                              ", ".join(sorted(policies & ours))))
    note = None
    if len(accessors) > MAX_TOKEN_LOOKUPS:
        note = f"tokens: only the first {MAX_TOKEN_LOOKUPS} of {len(accessors)} token accessors were looked up"
    return items, note


VAULT_TLS_RENEWED_BY = "whoever runs Vault's listener (not vaultk8s)"


def vault_tls_lifetimes(gateway: VaultGateway) -> tuple[list[Lifetime], list[str]]:
    """What Vault's own TLS rests on: each known node's serving certificate, and the certificates of
    VAULT_CACERT. A node that does not answer the handshake is a note."""
    items, notes = [], []
    for addr in gateway.addresses():
        try:
            pem = gateway.served_certificate_pem(addr)
        except VaultError as err:
            notes.append(f"Vault TLS: {err}")
            continue
        if pem is None:
            notes.append(f"Vault TLS: {addr} serves plain HTTP: nothing expires, nothing is encrypted")
            continue
        items.append(_vault_tls_lifetime(plan.VAULT_TLS, f"{addr} serving certificate", crypto.load_cert(pem)))
    try:
        pem = gateway.trusted_ca_pem()
        trusted = crypto.load_certs(pem) if pem else []
    except VaultError as err:
        return items, [*notes, f"Vault TLS: {err}"]
    except ValueError:
        return items, [*notes, f"Vault TLS: VAULT_CACERT={gateway.cacert} holds no readable PEM certificate"]
    for index, cert in enumerate(trusted):
        name = f"VAULT_CACERT {gateway.cacert}" + (f" #{index + 1}" if len(trusted) > 1 else "")
        items.append(_vault_tls_lifetime(plan.VAULT_CA, name, cert))
    return items, notes


def vault_tls_expiries(gateway: VaultGateway, log: logging.Logger) -> dict[tuple[str, str], datetime] | None:
    """(kind, name) -> end of Vault's own TLS, for a long-running process's gauge; None when it could
    not be read (logged: only a metric, never worth failing a round or a login for)."""
    try:
        found, notes = vault_tls_lifetimes(gateway)
    except (VaultK8sError, ValueError) as err:
        log.warning("Vault's TLS certificates not read: %s", err)
        return None
    for note in notes:
        log.info("%s", note)
    return {(i.kind, i.name): i.not_after for i in found}


def _vault_tls_lifetime(kind: str, name: str, cert) -> Lifetime:
    return Lifetime(kind, name, cert.not_valid_after_utc, Renewal.PERSON, VAULT_TLS_RENEWED_BY,
                    cert.subject.rfc4514_string())
