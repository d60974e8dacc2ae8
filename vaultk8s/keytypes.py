"""Key types: what each name the cluster file may give means, and where each is allowed.

Vault, cryptography and the PKCS#11 token all take their parameters from this one table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeyTypeSpec:
    name: str  # as the cluster file writes it
    algorithm: str  # Vault's key_type: "ec" or "rsa"
    bits: int  # Vault's key_bits: the curve size or the modulus length
    curve: str | None = None  # EC keys: the named curve, as cryptography and PKCS#11 call it


KEY_TYPES: dict[str, KeyTypeSpec] = {spec.name: spec for spec in (
    KeyTypeSpec("ec-p256", "ec", 256, "secp256r1"),
    KeyTypeSpec("ec-p384", "ec", 384, "secp384r1"),
    KeyTypeSpec("rsa-2048", "rsa", 2048),
    KeyTypeSpec("rsa-3072", "rsa", 3072),
    KeyTypeSpec("rsa-4096", "rsa", 4096),
)}

# Where each is allowed, in the order the cluster file's messages list them.
LEAF_KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")  # pki.key_type: leaves, Vault-held CAs
ROOT_KEY_TYPES = tuple(KEY_TYPES)  # hsm.key_type: the roots in the token
SA_KEY_TYPES = ("rsa-2048", "ec-p256")  # service_account.key_type: kube-apiserver's token signing keys


def vault_key_params(name: str) -> tuple[str, int]:
    """(key_type, key_bits) as Vault's PKI roles and CA endpoints take them."""
    spec = KEY_TYPES[name]
    return spec.algorithm, spec.bits
