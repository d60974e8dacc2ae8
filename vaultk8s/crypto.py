"""Keys, CSRs and certificate inspection with `cryptography` (pure computation, no I/O)."""

from __future__ import annotations

import ipaddress
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta

import cryptography
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vaultk8s.catalog import Usage
from vaultk8s.errors import CertificateRefused
from vaultk8s.keytypes import KEY_TYPES

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# kubeadm's CAs have serial number 0 (docs/adopt-facts.md, 2): cryptography warns on every load, and
# `adopt` would print that warning for a tree it reads correctly. Filtered once, for that warning only.
warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive",
                        category=CryptographyDeprecationWarning)

_CURVES = {curve.name: curve for curve in (ec.SECP256R1, ec.SECP384R1)}
_CURVE_KEY_TYPES = {spec.curve: spec.name for spec in KEY_TYPES.values() if spec.curve}

_EKU = {Usage.SERVER: ExtendedKeyUsageOID.SERVER_AUTH, Usage.CLIENT: ExtendedKeyUsageOID.CLIENT_AUTH}

# Certificates signed here (the dev listener's, HSM roots) are backdated, so a verifier whose
# clock is a little slow accepts a fresh one.
NOT_BEFORE_SKEW = timedelta(minutes=5)


def generate_key(key_type: str) -> PrivateKey:
    spec = KEY_TYPES.get(key_type)
    if spec is None:
        raise ValueError(f"unknown key type {key_type!r}")
    if spec.curve is not None:
        return ec.generate_private_key(_CURVES[spec.curve]())
    return rsa.generate_private_key(public_exponent=65537, key_size=spec.bits)


def key_type_of(public_key) -> str:
    """The key type name of a public key; an unknown curve by its own name, any RSA size as rsa-<bits>."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return _CURVE_KEY_TYPES.get(public_key.curve.name, public_key.curve.name)
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"rsa-{public_key.key_size}"
    return type(public_key).__name__


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def build_csr(key: PrivateKey, common_name: str, organization: str | None,
              dns_sans: tuple[str, ...], ip_sans: tuple) -> str:
    """A CSR naming the identity; Vault's role decides what is actually granted (O included)."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attrs))
    sans = [x509.DNSName(n) for n in dns_sans] + [x509.IPAddress(ip) for ip in ip_sans]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    csr = builder.sign(key, hashes.SHA256() if isinstance(key, rsa.RSAPrivateKey) or
                       key.curve.key_size <= 256 else hashes.SHA384())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def new_key_and_csr(key_type: str, common_name: str, organization: str | None, dns_sans: tuple[str, ...],
                    ip_sans: tuple) -> tuple[bytes, str]:
    """(private key PEM, CSR PEM): plain values, so a process pool can make them (RSA holds the GIL)."""
    key = generate_key(key_type)
    return key_pem(key), build_csr(key, common_name, organization, dns_sans, ip_sans)


def certificate_builder(subject: x509.Name, issuer: x509.Name, public_key, now: datetime,
                        not_after: datetime) -> x509.CertificateBuilder:
    """What every certificate signed here starts from: names, key, a random serial, the validity."""
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - NOT_BEFORE_SKEW)
            .not_valid_after(not_after))


def key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    """KeyUsage with only these bits set (cert_sign: keyCertSign and cRLSign)."""
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                         encipher_only=False, decipher_only=False)


def load_cert(pem: bytes | str) -> x509.Certificate:
    """The first certificate of the text (as cryptography reads it)."""
    return _loaded(x509.load_pem_x509_certificate, pem, first_only=True)


def load_certs(pem: bytes | str) -> list[x509.Certificate]:
    return _loaded(x509.load_pem_x509_certificates, pem, first_only=False)


def _loaded(load, pem: bytes | str, first_only: bool):
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return load(data)
    except ValueError:
        _refuse_if_serial_not_positive(data, first_only)
        raise


def _refuse_if_serial_not_positive(data: bytes, first_only: bool) -> None:
    """cryptography 48 warns that a future release will refuse serial 0, which kubeadm's CAs have: on
    that day, say so and how to get out, rather than call an adopted root unreadable. first_only: the
    loader read only the first certificate, so a later one cannot be why it failed."""
    serials = _serials(data)
    for serial, subject in serials[:1] if first_only else serials:
        if serial <= 0:
            raise CertificateRefused(
                f"cryptography {cryptography.__version__} refuses the certificate {subject!r}: its serial number is "
                f"{serial} (kubeadm makes its CAs with 0). Install the cryptography release used before, then retire "
                "that root with `vaultk8s ca rotate` (docs/adopt.md, step 6)")


def _serials(data: bytes) -> list[tuple[int, str]]:
    """(serial, subject) of each PEM certificate, read with asn1crypto, which reads what cryptography refuses."""
    from asn1crypto import pem as asn1_pem, x509 as asn1_x509  # only a refused load needs it: 20 ms of imports

    try:
        certs = [asn1_x509.Certificate.load(der) for kind, _, der in asn1_pem.unarmor(data, multiple=True)
                 if kind == "CERTIFICATE"]
        return [(cert.serial_number, cert.subject.human_friendly) for cert in certs]
    except (ValueError, TypeError):
        return []


def load_key(pem: bytes) -> PrivateKey:
    # The full RSA consistency check costs ~45 ms a key (2 minutes for a 1000-node no-op run);
    # callers only compare the public half with a certificate, which the skip does not weaken.
    return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def is_self_signed(cert: x509.Certificate) -> bool:
    """Signed by its own key: a root. A cross-signed root has the same subject and issuer names
    (during a CA rotation both roots are CN=kubernetes) but is signed by the other root's key."""
    return cert.subject == cert.issuer and signed_by(cert, cert)


@dataclass(frozen=True)
class CertFacts:
    """What a certificate says, in the terms the catalog uses."""

    common_name: str
    organizations: tuple[str, ...]
    dns_sans: frozenset[str]
    ip_sans: frozenset
    usages: frozenset[Usage]
    key_type: str
    not_before: datetime
    not_after: datetime
    serial: int


def facts(cert: x509.Certificate) -> CertFacts:
    subject = cert.subject
    cn = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    orgs = tuple(str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = frozenset(san.get_values_for_type(x509.DNSName))
        ips = frozenset(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = frozenset(), frozenset()
    try:
        ekus = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        ekus = set()
    usages = frozenset(u for u, oid in _EKU.items() if oid in ekus)
    return CertFacts(
        common_name=str(cn[0]) if cn else "", organizations=orgs, dns_sans=dns,
        ip_sans=frozenset(ipaddress.ip_address(str(i)) for i in ips), usages=usages,
        key_type=key_type_of(cert.public_key()), not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc, serial=cert.serial_number,
    )


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):  # InvalidSignature is not a ValueError
        return False
    return True


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    return cert.public_key() == key.public_key()


def unusable_anchor(common_name: str, now: datetime) -> bytes:
    """A self-signed certificate whose key is dropped here: a trust anchor nothing can chain to.

    Vault's cert auth insists on a certificate per entry; before a CA exists this stands in for it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (certificate_builder(name, name, key.public_key(), now, now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert_pem(cert)


def same_certificates(a: bytes | str | None, b: bytes | str | None) -> bool:
    """The same set of certificates in two PEM bundles, whatever their order and line ends."""
    def prints(pem: bytes | str | None) -> set[str] | None:
        try:
            return {fingerprint(c) for c in load_certs(pem)} if pem else set()
        except ValueError:
            return None

    found = prints(a)
    return found is not None and found == prints(b)
