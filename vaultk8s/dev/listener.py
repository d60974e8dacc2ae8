"""The dev server's listener TLS files in its state dir, kept valid: made once, then the server
certificate is re-issued from the kept CA whenever its renewal window opens (`vaultk8s dev up` and
the long-running `vaultk8s dev serve` call `ensure`; the caller then sends the server SIGHUP, which
makes OpenBao load the new pair).

Files: ca.pem, ca.key (0600), server.pem, server.key (0600). OpenBao reads the pair only at start and
on SIGHUP, both sent by the caller after `ensure` has replaced both files, so it never loads a key
with another key's certificate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from vaultk8s.crypto import facts, load_cert, load_key
from vaultk8s.dev.tls import SERVER_LIFETIME, render_server_cert, render_tls_material, renewal_due_at
from vaultk8s.store.atomic import public, read_file, replace_file, secret


class ListenerChange(str, Enum):
    NONE = "none"
    CREATED = "created"  # there was none
    RENEWED = "renewed"  # a new server certificate from the same CA: clients notice nothing
    NEW_CA = "new-ca"  # a new CA too: clients must trust the new ca.pem


@dataclass(frozen=True)
class ListenerTls:
    state_dir: Path
    hostnames: tuple[str, ...] = ()  # beyond localhost and 127.0.0.1
    lifetime: dt.timedelta = SERVER_LIFETIME

    def ensure(self, now: dt.datetime) -> ListenerChange:
        """Make the files when missing; re-issue the server certificate when it is due, names other
        hosts, or is unreadable. A new CA only when there is none, its key is missing (a compose
        volume from before the key was kept), unreadable or another CA's, or it cannot cover a whole
        server lifetime."""
        server, ca = self._cert("server.pem"), self._cert("ca.pem")
        if server is not None and ca is not None and self._current(server, ca, now):
            return ListenerChange.NONE
        ca_key = self._key_of(ca, "ca.key") if ca is not None else None
        if ca is not None and ca_key is not None and ca.not_valid_after_utc - now >= self.lifetime:
            cert_pem, key_pem = render_server_cert(ca, ca_key, now, self.hostnames, self.lifetime)
            self._write_server(cert_pem, key_pem)
            return ListenerChange.RENEWED
        created = not self._file("ca.pem").exists()
        tls = render_tls_material(now, self.hostnames, self.lifetime)
        replace_file(self._file("ca.key"), secret(tls.ca_key))
        self._write_server(tls.server_cert, tls.server_key)
        replace_file(self._file("ca.pem"), public(tls.ca_cert))
        return ListenerChange.CREATED if created else ListenerChange.NEW_CA

    def renew_at(self) -> dt.datetime | None:
        """When `ensure` will next re-issue the server certificate (None: it will make it now)."""
        server = self._cert("server.pem")
        return renewal_due_at(server, self.lifetime) if server is not None else None

    def _current(self, server: x509.Certificate, ca: x509.Certificate, now: dt.datetime) -> bool:
        return (now < renewal_due_at(server, self.lifetime) and set(self.hostnames) <= facts(server).dns_sans
                and _issued_by(server, ca) and self._key_of(server, "server.key") is not None)

    def _write_server(self, cert_pem: bytes, key_pem: bytes) -> None:
        replace_file(self._file("server.key"), secret(key_pem))
        replace_file(self._file("server.pem"), public(cert_pem))

    def _key_of(self, cert: x509.Certificate, name: str):
        """The key in name when it is readable and cert's; else None (a CA key that is not ca.pem's
        could sign nothing that clients of ca.pem trust, and OpenBao would not start on a torn pair)."""
        pem = read_file(self._file(name))
        try:
            key = load_key(pem) if pem is not None else None
        except (ValueError, TypeError):
            return None
        return key if key is not None and key.public_key() == cert.public_key() else None

    def _cert(self, name: str) -> x509.Certificate | None:
        pem = read_file(self._file(name))
        try:
            return load_cert(pem) if pem is not None else None
        except ValueError:
            return None

    def _file(self, name: str) -> Path:
        return self.state_dir / name


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """cert is signed by ca: a write of a new CA cut short between server.pem and ca.pem left
    clients trusting a CA that did not sign what the server serves."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
