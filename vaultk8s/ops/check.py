"""`vaultk8s certs check`: every certificate on disk, its expiry, its CA, and what is wrong with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from vaultk8s import catalog, crypto
from vaultk8s.catalog import PKI_DIR
from vaultk8s.plan.leaves import renewal_time
from vaultk8s.errors import StoreError
from vaultk8s.store.atomic import DATA_LINK
from vaultk8s.store.layout import NodeOutput, node_dirs


@dataclass(frozen=True)
class CertStatus:
    node: str
    file: str
    subject: str
    ca: str
    not_after: datetime | None
    residual_seconds: int | None
    renewal_due: bool
    problems: tuple[str, ...] = field(default_factory=tuple)
    not_before: datetime | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["not_after"] = self.not_after.isoformat() if self.not_after else None
        data["not_before"] = self.not_before.isoformat() if self.not_before else None
        data["problems"] = list(self.problems)
        return data


def check_out_dir(out: Path, now: datetime) -> list[CertStatus]:
    names = node_dirs(out)
    if not names:
        raise StoreError(f"no node directories (NODE/pki/) under {out}: is it a `vaultk8s bootstrap --out` directory?")
    rows: list[CertStatus] = []
    for name in names:
        node_rows = _node_rows(NodeOutput(out, name), name, now)
        rows.extend(node_rows or [_empty_row(out, name)])
    return rows


def _node_rows(node: NodeOutput, name: str, now: datetime) -> list[CertStatus]:
    rows, anchors = [], {}
    for ca in catalog.CAS:
        pem = node.read_pki(ca.cert_file)
        if pem is None:
            continue
        try:
            anchors[ca.name] = crypto.load_certs(pem)
        except ValueError:
            rows.append(CertStatus(name, ca.cert_file, "", ca.name, None, None, False, ("unreadable CA bundle",)))
            continue
        rows.append(_ca_row(name, ca, anchors[ca.name][0], now))
    for spec in catalog.CERTS:
        pem = node.read_pki(spec.cert_file)
        if pem is not None:
            rows.append(_leaf_row(node, name, spec, pem, anchors.get(spec.ca, []), now))
    return rows


def _empty_row(out: Path, name: str) -> CertStatus:
    """A node whose pki/ yields nothing is a problem, not an empty table: say why."""
    data = Path(out) / name / PKI_DIR / DATA_LINK
    why = "pki/..data points at a missing version directory" if data.is_symlink() and not data.exists() \
        else "no certificates in pki/"
    return CertStatus(name, f"{PKI_DIR}/", "", "", None, None, False, (why,))


def _ca_row(node: str, ca: catalog.CASpec, cert, now: datetime) -> CertStatus:
    problems = ("expired",) if now >= cert.not_valid_after_utc else ()
    return CertStatus(node, ca.cert_file, cert.subject.rfc4514_string(), ca.name, cert.not_valid_after_utc,
                      _residual(cert, now), False, problems)


def _leaf_row(node: NodeOutput, name: str, spec: catalog.CertSpec, pem: bytes, anchors: list, now: datetime) -> CertStatus:
    try:
        chain = crypto.load_certs(pem)
    except ValueError:
        return CertStatus(name, spec.cert_file, "", spec.ca, None, None, False, ("unreadable certificate",))
    cert, intermediates = chain[0], chain[1:]
    problems = []
    if now >= cert.not_valid_after_utc:
        problems.append("expired")
    if not _chains_to(cert, intermediates, anchors):
        problems.append(f"not issued by {spec.ca} ({catalog.ca(spec.ca).cert_file})")
    problems.extend(_key_problems(node, spec, cert))
    due = now >= renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc)
    return CertStatus(name, spec.cert_file, cert.subject.rfc4514_string(), spec.ca, cert.not_valid_after_utc,
                      _residual(cert, now), due, tuple(problems), cert.not_valid_before_utc)


def _chains_to(cert, intermediates: list, anchors: list) -> bool:
    """Leaf -> the intermediates in the file, in order, up to the first one a node's CA certificate
    signed: verifiers stop there, and after a CA rotation the file may still end with the new root
    cross-signed by the retired one."""
    chain = [cert, *intermediates]
    for depth, link in enumerate(chain):
        if depth and not crypto.signed_by(chain[depth - 1], link):
            return False
        if any(crypto.signed_by(link, anchor) for anchor in anchors):
            return True
    return False


def _key_problems(node: NodeOutput, spec: catalog.CertSpec, cert) -> list[str]:
    key_pem = node.read_pki(spec.key_file)
    if key_pem is None:
        return ["key missing"]
    try:
        key = crypto.load_key(key_pem)
    except (ValueError, TypeError):
        return ["key unreadable"]
    return [] if crypto.key_matches(cert, key) else ["key does not match certificate"]


def _residual(cert, now: datetime) -> int:
    return max(0, int((cert.not_valid_after_utc - now).total_seconds()))
