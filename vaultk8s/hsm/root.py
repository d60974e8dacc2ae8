"""The three root CAs held in the token: ensure each root exists, sign intermediates, report.

Per CA the token holds a keypair and the self-signed root certificate (CKO_CERTIFICATE), all
sharing one CKA_ID derived from the CA name. Nothing here chooses a time: `now` is a parameter.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

import pkcs11
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, CertificateType, KeyType, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_named_curve_parameters

from vaultk8s.crypto import certificate_builder, key_usage
from vaultk8s.errors import HsmError
from vaultk8s.hsm.keys import (
    KEY_SPECS,
    KeySpec,
    check_mechanisms,
    cka_id,
    find_one,
    generate_keypair,
    key_label,
    public_key_of,
    token_call,
    token_signer,
)
from vaultk8s.hsm.openssl import drain_openssl_errors

@dataclass(frozen=True)
class RootKeyStatus:
    ca_name: str
    key_id: str  # the CKA_ID, hex (named so in `hsm status --output json`)
    key_found: bool
    key_type: str | None = None
    sensitive: bool | None = None
    extractable: bool | None = None
    always_sensitive: bool | None = None
    never_extractable: bool | None = None
    cert_found: bool = False
    subject: str | None = None
    sha256_fingerprint: str | None = None
    not_after: datetime | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["not_after"] = self.not_after.isoformat() if self.not_after else None
        return data


def _drains(method):
    """Leave the thread's OpenSSL error queue empty for the HTTPS calls that follow (see openssl.py)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        finally:
            drain_openssl_errors()
    return wrapper


@dataclass
class _Root:
    """A CA's objects as found in the token; any of them may be missing."""
    private: pkcs11.PrivateKey | None
    public: pkcs11.PublicKey | None
    cert: x509.Certificate | None


class HsmRootAuthority:
    """Root keys and certificates of the CAs, in one logged-in session (see `open_token`)."""

    def __init__(self, session: pkcs11.Session, key_type: str, scope: str = ""):
        """scope names the cluster (e.g. "demo/clusters/demo/"): clusters sharing a token get
        distinct roots, so one cluster's certificates are never trusted by another."""
        self._scope = scope
        if key_type not in KEY_SPECS:
            raise HsmError(f"unknown key_type {key_type!r}; use one of {', '.join(KEY_SPECS)}")
        self._session = session
        self._spec: KeySpec = KEY_SPECS[key_type]

    def _scoped(self, ca_name: str) -> str:
        return f"{self._scope}{ca_name}"

    @_drains
    def ensure_root(self, ca_name: str, common_name: str, ttl: timedelta, now: datetime,
                    allow_new_cert: bool = False) -> x509.Certificate:
        """The CA's root certificate, creating the key and certificate if neither exists."""
        _require_aware(now)
        root = self._find(ca_name)
        if root.private is None and root.cert is not None:
            raise HsmError(f"{ca_name}: the token holds a root certificate but not its private "
                           "key; restore the key from the HSM backup or remove the certificate")
        if root.private is None and root.public is not None:
            raise HsmError(f"{ca_name}: the token holds a public key without its private key "
                           f"(CKA_ID {cka_id(self._scoped(ca_name)).hex()}); remove it before creating a root")
        if root.private is not None:
            self._check_key_type(ca_name, root.private)
        if root.cert is not None:
            self._check_cert_matches(ca_name, root)
            return root.cert
        if root.private is not None and not allow_new_cert:
            raise HsmError(f"{ca_name}: the token holds the root key but no root certificate; "
                           "a new certificate would be a new root that nothing trusts yet - "
                           "restore the certificate, or pass allow_new_cert to issue one")
        check_mechanisms(self._session.token, self._spec)
        if root.private is None:
            root.public, root.private = generate_keypair(self._session, self._spec, self._scoped(ca_name))
        cert = self._self_sign(root, common_name, ttl, now)
        self._store_cert(ca_name, cert)
        return cert

    @_drains
    def sign_intermediate(self, ca_name: str, csr: x509.CertificateSigningRequest,
                          ttl: timedelta, now: datetime) -> x509.Certificate:
        """Sign the CSR as an intermediate CA (pathlen 0) under this CA's HSM root."""
        _require_aware(now)
        if not csr.is_signature_valid:
            raise HsmError(f"{ca_name}: the intermediate CSR's signature does not verify")
        if not list(csr.subject):
            raise HsmError(f"{ca_name}: the intermediate CSR has an empty subject")
        root = self._signing_root(ca_name, "; create the root first (ensure_root)")
        check_mechanisms(self._session.token, self._spec)
        not_after = min(now + ttl, root.cert.not_valid_after_utc)
        if not_after <= now:
            raise HsmError(f"{ca_name}: the root certificate expired at "
                           f"{root.cert.not_valid_after_utc.isoformat()}")
        return self._sign_under(root, _ca_builder(csr.subject, root.cert.subject, csr.public_key(), now, not_after,
                                                  path_length=0))

    @_drains
    def cross_sign(self, ca_name: str, other_root: x509.Certificate, now: datetime) -> x509.Certificate:
        """other_root's subject and key, signed by this CA's root (CA rotation): a client that trusts
        only this root accepts what other_root's key signs."""
        _require_aware(now)
        root = self._signing_root(ca_name, " to cross-sign with")
        not_after = min(other_root.not_valid_after_utc, root.cert.not_valid_after_utc)
        return self._sign_under(root, _ca_builder(other_root.subject, root.cert.subject, other_root.public_key(), now,
                                                  not_after, path_length=1))

    @_drains
    def status(self, ca_names: tuple[str, ...]) -> list[RootKeyStatus]:
        """What the token holds for each CA; never changes the token."""
        return [self._status_of(name) for name in ca_names]

    # -- finding and checking -------------------------------------------------------------

    def _find(self, ca_name: str) -> _Root:
        ident = cka_id(self._scoped(ca_name))
        try:
            private = find_one(self._session, ObjectClass.PRIVATE_KEY, ident)
            public = find_one(self._session, ObjectClass.PUBLIC_KEY, ident)
            cert_obj = find_one(self._session, ObjectClass.CERTIFICATE, ident)
            cert = x509.load_der_x509_certificate(cert_obj[Attribute.VALUE]) if cert_obj else None
        except p11e.PKCS11Error as err:
            raise HsmError(f"{ca_name}: reading the token failed: {type(err).__name__}") from None
        except ValueError:
            raise HsmError(f"{ca_name}: the certificate object in the token is not valid DER") \
                from None
        return _Root(private, public, cert)

    def _signing_root(self, ca_name: str, without: str) -> _Root:
        """The CA's root, checked before it signs anything; `without` ends the refusal when it is missing."""
        root = self._find(ca_name)
        if root.private is None or root.cert is None:
            raise HsmError(f"{ca_name}: no root key and certificate in the token{without}")
        self._check_key_type(ca_name, root.private)
        self._check_cert_matches(ca_name, root)
        return root

    def _check_key_type(self, ca_name: str, private: pkcs11.PrivateKey) -> None:
        found = _token_key_type(private)
        if found != self._spec.name:
            raise HsmError(f"{ca_name}: the root key in the token is {found} but key_type is "
                           f"{self._spec.name}; set key_type: {found} (a root key is not rotated "
                           "by changing the setting)")

    def _check_cert_matches(self, ca_name: str, root: _Root) -> None:
        if root.public is None:
            return
        if _spki(public_key_of(root.public)) != _spki(root.cert.public_key()):
            raise HsmError(f"{ca_name}: the root certificate in the token does not match the "
                           "root key with the same CKA_ID; the token needs manual repair")

    def _status_of(self, ca_name: str) -> RootKeyStatus:
        root = self._find(ca_name)
        ident = cka_id(self._scoped(ca_name)).hex()
        key_fields = {}
        if root.private is not None:
            key_fields = {
                "key_type": _token_key_type(root.private),
                "sensitive": bool(root.private[Attribute.SENSITIVE]),
                "extractable": bool(root.private[Attribute.EXTRACTABLE]),
                "always_sensitive": bool(root.private[Attribute.ALWAYS_SENSITIVE]),
                "never_extractable": bool(root.private[Attribute.NEVER_EXTRACTABLE]),
            }
        cert_fields = {}
        if root.cert is not None:
            cert_fields = {
                "cert_found": True,
                "subject": root.cert.subject.rfc4514_string(),
                "sha256_fingerprint": root.cert.fingerprint(hashes.SHA256()).hex(":"),
                "not_after": root.cert.not_valid_after_utc,
            }
        return RootKeyStatus(ca_name, ident, root.private is not None, **key_fields, **cert_fields)

    # -- creating ---------------------------------------------------------------------------

    def _self_sign(self, root: _Root, common_name: str, ttl: timedelta,
                   now: datetime) -> x509.Certificate:
        public_key = _public_key(root)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        # pathlen 1: the root signs only the Vault intermediate, which signs only leaves.
        builder = _ca_builder(name, name, public_key, now, now + ttl, path_length=1)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        return self._sign(builder, root, issuer=None)

    def _sign(self, builder: x509.CertificateBuilder, root: _Root,
              issuer: x509.Certificate | None) -> x509.Certificate:
        signer = token_signer(root.private, _public_key(root), self._spec)
        cert = builder.sign(private_key=signer, algorithm=self._spec.hash())
        try:
            # Catch a token that signed garbage before anything trusts the result.
            cert.verify_directly_issued_by(issuer or cert)
        except (InvalidSignature, ValueError, TypeError):
            raise HsmError("the certificate signed by the token does not verify; "
                           "the token or its key is faulty") from None
        return cert

    def _sign_under(self, root: _Root, builder: x509.CertificateBuilder) -> x509.Certificate:
        """builder's certificate, its AKI the root's key identifier, signed by the root."""
        root_ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski.value), critical=False)
        return self._sign(builder, root, issuer=root.cert)

    def _store_cert(self, ca_name: str, cert: x509.Certificate) -> None:
        with token_call(f"{ca_name}: storing the root certificate in the token failed"):
            self._session.create_object({
                Attribute.CLASS: ObjectClass.CERTIFICATE,
                Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                Attribute.TOKEN: True,
                Attribute.PRIVATE: False,
                Attribute.MODIFIABLE: False,
                Attribute.ID: cka_id(self._scoped(ca_name)),
                Attribute.LABEL: key_label(self._scoped(ca_name)),
                Attribute.SUBJECT: cert.subject.public_bytes(),
                Attribute.ISSUER: cert.issuer.public_bytes(),
                Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
            })


def _ca_builder(subject: x509.Name, issuer: x509.Name, public_key, now: datetime,
                not_after: datetime, path_length: int) -> x509.CertificateBuilder:
    return (certificate_builder(subject, issuer, public_key, now, not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(key_usage(digital_signature=False, cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _public_key(root: _Root):
    if root.public is not None:
        return public_key_of(root.public)
    if root.cert is not None:
        return root.cert.public_key()
    raise HsmError(f"the public key for {root.private.label!r} is missing from the token")


def _token_key_type(private: pkcs11.PrivateKey) -> str:
    if private.key_type == KeyType.EC:
        params = private[Attribute.EC_PARAMS]
        for spec in KEY_SPECS.values():
            if spec.curve and encode_named_curve_parameters(spec.curve) == params:
                return spec.name
        return "ec-(unsupported curve)"
    if private.key_type == KeyType.RSA:
        return f"rsa-{len(private[Attribute.MODULUS]) * 8}"
    return f"{private.key_type.name} (unsupported)"


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
