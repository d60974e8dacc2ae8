"""The dev server's listener TLS: a small self-signed CA and a server cert for 127.0.0.1/localhost
(plus extra host names, e.g. the compose service name `openbao`). Pure: dev/listener.py keeps the files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vaultk8s.catalog import RENEW_FRACTION
from vaultk8s.crypto import cert_pem, certificate_builder, key_pem, key_usage

CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=825)


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes for the dev CA and the listener's server certificate."""

    ca_cert: bytes
    ca_key: bytes
    server_cert: bytes
    server_key: bytes


def render_tls_material(now: dt.datetime, hostnames: tuple[str, ...] = (),
                        server_lifetime: dt.timedelta = SERVER_LIFETIME) -> TlsMaterial:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _ca_cert(ca_key, now)
    server_cert, server_key = render_server_cert(ca_cert, ca_key, now, hostnames, server_lifetime)
    return TlsMaterial(ca_cert=cert_pem(ca_cert), ca_key=key_pem(ca_key), server_cert=server_cert,
                       server_key=server_key)


def render_server_cert(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime,
                       hostnames: tuple[str, ...] = (),
                       lifetime: dt.timedelta = SERVER_LIFETIME) -> tuple[bytes, bytes]:
    """A new key and listener certificate from the kept CA (the PEMs of both); never past the CA's end."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    return cert_pem(_server_cert(key, ca_cert, ca_key, now, not_after, hostnames)), key_pem(key)


def renewal_due_at(cert: x509.Certificate, lifetime: dt.timedelta = SERVER_LIFETIME) -> dt.datetime:
    """When the listener certificate is re-issued: at the same fraction of its life as every leaf.
    Counted back from its end, not from notBefore, which is backdated by minutes (crypto.NOT_BEFORE_SKEW)
    and would put a short certificate's window past its end."""
    return cert.not_valid_after_utc - lifetime * (1 - RENEW_FRACTION)


def _ca_cert(key: ec.EllipticCurvePrivateKey, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vaultk8s dev CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        certificate_builder(name, name, key.public_key(), now, now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(digital_signature=True, cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_cert(
    key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, now: dt.datetime,
    not_after: dt.datetime, hostnames: tuple[str, ...] = (),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    dns = [x509.DNSName(h) for h in dict.fromkeys(("localhost", *hostnames))]
    sans = x509.SubjectAlternativeName([*dns, x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        certificate_builder(name, ca_cert.subject, key.public_key(), now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(sans, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
