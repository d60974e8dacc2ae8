"""Golden manifests: what vaultk8s wrote (files, Vault roles, auth roles), minus what is random.

Keys, serials, validity instants, role_ids and version-directory names differ on every run; the
manifest keeps everything else to the byte: paths, modes, link shapes, every certificate's
subject, issuer, SANs, extensions and lifetime, kubeconfigs with only their base64 data replaced by
what it holds, and the Vault-side parameters read back. A refactor must leave it unchanged.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

_VERSION_DIR = re.compile(r"\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d[^/]*")
_DATA_LINE = re.compile(r"^(\s*[\w-]+-data: )(\S+)$", re.M)
_PEM_CERTS = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\s*", re.S)


def tree_manifest(root: Path, contents: bool = True) -> list[str]:
    """One line per path below root, sorted; file contents described, not copied (contents=False:
    names and modes only, for directories of secrets)."""
    lines = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = _VERSION_DIR.sub("..<version>", str(path.relative_to(root)))
            info = path.lstat()
            mode = f"{stat.S_IMODE(info.st_mode):04o}"
            if stat.S_ISLNK(info.st_mode):
                lines.append(f"{rel} link -> {_VERSION_DIR.sub('..<version>', os.readlink(path))}")
            elif stat.S_ISDIR(info.st_mode):
                lines.append(f"{rel} dir {mode}")
            else:
                shown = describe_file(path.name, path.read_bytes()) if contents else "<not read>"
                lines.append(f"{rel} file {mode}: {shown}")
    return sorted(lines)


def describe_file(name: str, data: bytes) -> str:
    if b"BEGIN CERTIFICATE" in data:
        return " | ".join(describe_cert(x509.load_pem_x509_certificate(m.group(0))) for m in _PEM_CERTS.finditer(data))
    if b"PRIVATE KEY" in data:
        return "private " + _key_kind(serialization.load_pem_private_key(data, None).public_key())
    if b"PUBLIC KEY" in data:
        keys = [serialization.load_pem_public_key(b) for b in re.findall(
            rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", data, re.S)]
        return "public " + ", ".join(_key_kind(k) for k in keys)
    if name.endswith(".conf"):
        return json.dumps(_DATA_LINE.sub(_describe_data, data.decode()))
    return json.dumps(data.decode())


def _describe_data(match: re.Match) -> str:
    raw = base64.b64decode(match.group(2))
    return match.group(1) + "<" + describe_file("", raw) + ">"


def _key_kind(key) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ec-{key.curve.name}"
    return type(key).__name__


def describe_cert(cert: x509.Certificate) -> str:
    parts = [f"subject={cert.subject.rfc4514_string()}", f"issuer={cert.issuer.rfc4514_string()}",
             f"key={_key_kind(cert.public_key())}",
             f"life={_tens((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds())}s"]
    for ext in sorted(cert.extensions, key=lambda e: e.oid.dotted_string):
        value = ext.value
        if isinstance(value, (x509.SubjectKeyIdentifier, x509.AuthorityKeyIdentifier)):
            shown = "<id>"
        elif isinstance(value, x509.SubjectAlternativeName):
            shown = ",".join(sorted(str(g.value) for g in value))
        elif isinstance(value, x509.ExtendedKeyUsage):
            shown = ",".join(sorted(u._name for u in value))
        elif isinstance(value, (x509.AuthorityInformationAccess, x509.CRLDistributionPoints)):
            shown = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", repr(value))
        else:
            shown = repr(value)
        parts.append(f"{ext.oid._name}{'!' if ext.critical else ''}={shown}")
    return " ".join(parts)


def _tens(seconds: float) -> int:
    """A lifetime to the nearest 10 s: a slow root generation can straddle a second between the
    backdated notBefore and notAfter (157680029 s instead of 157680030 s)."""
    return int((seconds + 5) // 10 * 10)


def vault_manifest(gateway, mounts: list[str], approle_mount: str, token_roles: list[str],
                   entities: list[str], cert_mount: str | None = None,
                   jwt_mount: str | None = None) -> dict[str, Any]:
    """Roles of each PKI mount and the machine-auth objects, read back from Vault."""
    doc: dict[str, Any] = {"pki_roles": {}, "approle_roles": {}, "cert_entries": {}, "token_roles": {}, "entities": {}}
    if jwt_mount is not None:
        doc["jwt"] = _jwt_manifest(gateway, jwt_mount)
    for name in sorted(gateway.list_cert_entries(cert_mount)) if cert_mount else []:
        entry = dict(gateway.read_cert_entry(cert_mount, name) or {})
        entry["certificate"] = sorted(describe_cert(c) for c in x509.load_pem_x509_certificates(
            (entry.get("certificate") or "").encode()))
        doc["cert_entries"][name] = entry
    for mount in mounts:
        for name in sorted(gateway.list_roles(mount)):
            doc["pki_roles"][f"{mount}/{name}"] = gateway.read_role(mount, name)
    for name in sorted(gateway.list_approle_roles(approle_mount)):
        doc["approle_roles"][name] = gateway.read_approle_role(approle_mount, name)
    for name in token_roles:
        doc["token_roles"][name] = gateway.read_token_role(name)
    for name in entities:
        entity = gateway.read_entity(name) or {}
        doc["entities"][name] = {"metadata": entity.get("metadata"), "policies": entity.get("policies"),
                                 "aliases": sorted(a.get("name") for a in entity.get("aliases") or [])}
    return doc


def _jwt_manifest(gateway, mount: str) -> dict[str, Any]:
    """The signer's JWT login: its roles as read back, its config with the keys described by kind."""
    roles = {name: (gateway.read(f"auth/{mount}/role/{name}") or {}).get("data")
             for name in sorted(gateway.client.list(f"auth/{mount}/role")["data"]["keys"])}
    config = (gateway.read(f"auth/{mount}/config") or {}).get("data") or {}
    keys = [_key_kind(serialization.load_pem_public_key(k.encode())) for k in config.get("jwt_validation_pubkeys") or []]
    return {"roles": roles, "config": {**config, "jwt_validation_pubkeys": keys}}
