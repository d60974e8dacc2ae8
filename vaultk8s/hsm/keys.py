"""Root keypairs inside the token, and cryptography key objects whose `sign` calls the token.

The private key never leaves the token: it is generated there with CKA_SENSITIVE true and
CKA_EXTRACTABLE false, and found again by CKA_ID (labels are not unique).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pkcs11
from asn1crypto.keys import PublicKeyInfo, RSAPublicKey
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11e
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters
from pkcs11.util.rsa import encode_rsa_public_key

from vaultk8s.errors import HsmError
from vaultk8s.hsm.openssl import drain_openssl_errors
from vaultk8s.keytypes import KEY_TYPES, ROOT_KEY_TYPES, KeyTypeSpec


@dataclass(frozen=True)
class KeySpec:
    name: str                      # the configured key_type, e.g. "ec-p384"
    pkcs11_type: KeyType
    bits: int                      # curve size or modulus length
    curve: str | None              # named curve for EC keys
    hash: type[hashes.HashAlgorithm]
    generate: Mechanism
    sign: Mechanism

    def mechanisms(self) -> tuple[Mechanism, Mechanism]:
        return self.generate, self.sign


def _key_spec(key_type: KeyTypeSpec) -> KeySpec:
    # SoftHSM offers only raw CKM_ECDSA for EC, so EC digests are computed locally.
    if key_type.curve is not None:
        digest = hashes.SHA256 if key_type.bits <= 256 else hashes.SHA384
        return KeySpec(key_type.name, KeyType.EC, key_type.bits, key_type.curve, digest,
                       Mechanism.EC_KEY_PAIR_GEN, Mechanism.ECDSA)
    return KeySpec(key_type.name, KeyType.RSA, key_type.bits, None, hashes.SHA256,
                   Mechanism.RSA_PKCS_KEY_PAIR_GEN, Mechanism.SHA256_RSA_PKCS)


KEY_SPECS = {name: _key_spec(KEY_TYPES[name]) for name in ROOT_KEY_TYPES}


def cka_id(ca_name: str) -> bytes:
    """A stable CKA_ID per CA, so the same key is found on every run."""
    return hashlib.sha256(f"vaultk8s:{ca_name}".encode()).digest()[:16]


def key_label(ca_name: str) -> str:
    return f"vaultk8s:{ca_name}"


def check_mechanisms(token: pkcs11.Token, spec: KeySpec) -> None:
    """Refuse early, with one line, if the token cannot generate or sign with this key type."""
    try:
        offered = token.slot.get_mechanisms()
    except p11e.PKCS11Error as err:
        raise HsmError(f"cannot list mechanisms of token {token.label!r}: "
                       f"{type(err).__name__}") from None
    missing = [m.name for m in spec.mechanisms() if m not in offered]
    if missing:
        raise HsmError(f"token {token.label!r} does not support {', '.join(missing)} "
                       f"needed for key_type {spec.name}; choose another key_type")


def find_one(session: pkcs11.Session, object_class: ObjectClass, ident: bytes):
    """The single object of this class with this CKA_ID, or None; two is an error."""
    found = list(session.get_objects({Attribute.CLASS: object_class, Attribute.ID: ident}))
    if len(found) > 1:
        raise HsmError(f"{len(found)} {object_class.name} objects share CKA_ID {ident.hex()}; "
                       "remove the duplicates with pkcs11-tool before continuing")
    return found[0] if found else None


@contextmanager
def token_call(what: str) -> Iterator[None]:
    """A block of PKCS#11 calls: a failure becomes one line, `<what>: <error name>`, and the
    thread's OpenSSL error queue is left empty for the HTTPS calls that follow."""
    try:
        yield
    except p11e.PKCS11Error as err:
        raise HsmError(f"{what}: {type(err).__name__}") from None
    finally:
        drain_openssl_errors()


def generate_keypair(session: pkcs11.Session, spec: KeySpec, ca_name: str):
    """Generate a non-extractable signing keypair inside the token; returns (public, private)."""
    common = {"id": cka_id(ca_name), "label": key_label(ca_name), "store": True,
              "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
              "public_template": {Attribute.TOKEN: True, Attribute.PRIVATE: False},
              "private_template": {Attribute.TOKEN: True, Attribute.PRIVATE: True,
                                   Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}}
    with token_call(f"generating the {spec.name} key for {ca_name} failed in the token"):
        if spec.pkcs11_type == KeyType.EC:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(spec.curve)},
                local=True)
            return params.generate_keypair(**common)
        return session.generate_keypair(KeyType.RSA, spec.bits, **common)


def public_key_of(public: pkcs11.PublicKey):
    """The token's public key object as a cryptography public key."""
    if public.key_type == KeyType.EC:
        return serialization.load_der_public_key(encode_ec_public_key(public))
    return serialization.load_der_public_key(
        _pkcs1_to_spki(encode_rsa_public_key(public)))


def _pkcs1_to_spki(pkcs1_der: bytes) -> bytes:
    return PublicKeyInfo.wrap(RSAPublicKey.load(pkcs1_der), "rsa").dump()


def token_signer(private: pkcs11.PrivateKey, public_key, spec: KeySpec):
    """A cryptography private key whose `sign` is done by the token."""
    if spec.pkcs11_type == KeyType.EC:
        return _TokenEcKey(private, public_key, spec)
    return _TokenRsaKey(private, public_key, spec)


def _token_sign(private: pkcs11.PrivateKey, data: bytes, mechanism: Mechanism) -> bytes:
    with token_call(f"the token refused to sign with {private.label!r} ({mechanism.name})"):
        return private.sign(data, mechanism=mechanism)


class _TokenKey:
    """What both token key classes share: the public half kept here, and refusals, since a token
    key has no private numbers or bytes to give."""

    def __init__(self, private, public_key, spec: KeySpec):
        self._private, self._public, self._spec = private, public_key, spec

    def public_key(self):
        return self._public

    def private_numbers(self):
        raise HsmError("the private key lives in the HSM and cannot be exported")

    def private_bytes(self, *args, **kwargs):
        raise HsmError("the private key lives in the HSM and cannot be exported")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class _TokenEcKey(_TokenKey, ec.EllipticCurvePrivateKey):
    @property
    def curve(self):
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def exchange(self, algorithm, peer_public_key):
        raise HsmError("the HSM root key is for signing only")

    def sign(self, data: bytes, signature_algorithm) -> bytes:
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = data
        else:
            hasher = hashes.Hash(algorithm)
            hasher.update(data)
            digest = hasher.finalize()
        raw = _token_sign(self._private, digest, Mechanism.ECDSA)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                    int.from_bytes(raw[half:], "big"))


class _TokenRsaKey(_TokenKey, rsa.RSAPrivateKey):
    @property
    def key_size(self) -> int:
        return self._public.key_size

    def decrypt(self, ciphertext, padding):
        raise HsmError("the HSM root key is for signing only")

    def sign(self, data: bytes, pad, algorithm) -> bytes:
        if not isinstance(pad, padding.PKCS1v15) or not isinstance(algorithm, hashes.SHA256):
            raise HsmError("the HSM root key signs only with PKCS#1 v1.5 and SHA-256")
        return _token_sign(self._private, data, Mechanism.SHA256_RSA_PKCS)
