"""HSM mode's CA setup: roots in the PKCS#11 token, and the intermediates they sign in the mounts.

One logged-in token session serves a whole CA phase (bootstrap's CAs, one CA rotation step). It is
opened before any Vault write, so a wrong PIN or a missing token fails with Vault untouched
(docs/hsm.md). Used by ops/cas.py and ops/ca_rotation.py.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import TYPE_CHECKING, Iterator

from cryptography import x509

from vaultk8s import catalog, crypto
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import HsmError, VaultError
from vaultk8s.plan.naming import generation_of, token_root_name
from vaultk8s.plan.cas import intermediate_params

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

if TYPE_CHECKING:
    from vaultk8s.hsm import HsmRootAuthority


@contextlib.contextmanager
def root_authority(config: ClusterConfig) -> Iterator[HsmRootAuthority | None]:
    """One logged-in token session for the CA phase, or None without an hsm: block."""
    if config.hsm is None:
        yield None
        return
    from vaultk8s.hsm import HsmRootAuthority, open_token  # pkcs11 only when HSM mode is on

    with open_token(config.hsm) as session:
        yield HsmRootAuthority(session, config.hsm.key_type, scope=config.hsm_scope)


def current_token_root(config: ClusterConfig, gateway: VaultGateway, ca: catalog.CASpec) -> str:
    """The token root of the mount's current generation (after a CA rotation: `<ca>-g<N>`)."""
    mount = config.mount(ca.name)
    if config.hsm is None or gateway.mount_type(mount) != "pki":
        return ca.name
    current = gateway.read_issuer(mount, "default") or {}
    return token_root_name(ca.name, generation_of(current.get("issuer_name") or ""))


def probe_roots(authority: HsmRootAuthority | None, token_names: dict[str, str]) -> dict[str, str]:
    """The token's root fingerprints per CA (token_names: CA -> its root's name in the token),
    read-only; half-present roots are refused here so even --dry-run reports them."""
    if authority is None:
        return {}
    found = {}
    by_token_name = {token: ca for ca, token in token_names.items()}
    for entry in authority.status(tuple(token_names.values())):
        if entry.key_found and not entry.cert_found:
            raise HsmError(f"{entry.ca_name}: the token holds the root key but no root certificate; restore "
                           "the certificate (a new one would be a new root nothing trusts yet)")
        if entry.cert_found and not entry.key_found:
            raise HsmError(f"{entry.ca_name}: the token holds a root certificate but not its private key; "
                           "restore the key from the HSM backup")
        if entry.cert_found:
            found[by_token_name[entry.ca_name]] = entry.sha256_fingerprint.replace(":", "")
    return found


class HsmSigner:
    """Roots in the token and intermediates they sign, for one bootstrap run."""

    def __init__(self, authority: HsmRootAuthority, config: ClusterConfig, now: datetime):
        self._authority, self._config, self._now = authority, config, now
        self._roots: dict[str, x509.Certificate] = {}

    def ensure_root(self, ca: catalog.CASpec) -> x509.Certificate:
        if ca.name not in self._roots:
            self._roots[ca.name] = self._authority.ensure_root(ca.name, ca.common_name, self._config.ca_ttl, self._now)
        return self._roots[ca.name]

    def sign(self, ca: catalog.CASpec, csr_pem: str) -> tuple[x509.Certificate, x509.Certificate]:
        """(intermediate, root) for a CSR made in the mount."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        intermediate = self._authority.sign_intermediate(ca.name, csr, self._config.ca_ttl, self._now)
        return intermediate, self.ensure_root(ca)


def install_hsm_intermediate(ca: catalog.CASpec, config: ClusterConfig, gateway: VaultGateway,
                             signer: HsmSigner) -> None:
    """CSR in the mount -> signed by the token's root -> installed with the root as chain.

    Any failure after the CSR removes what this call created (issuers, then the key), so no mount
    is left holding a key without a certificate.
    """
    mount = config.mount(ca.name)
    csr_pem, key_id = gateway.generate_intermediate_csr(mount, intermediate_params(ca, config))
    imported: dict[str, str] = {}
    try:
        intermediate, root = signer.sign(ca, csr_pem)
        imported = gateway.set_signed_intermediate(mount, (crypto.cert_pem(intermediate) + crypto.cert_pem(root)).decode())
        # Explicit, not left to import order: the keyless root must never be the default issuer.
        default = [issuer for issuer, key in imported.items() if key == key_id]
        if len(default) != 1:
            raise VaultError(f"{mount}: set-signed did not import exactly one issuer for the new key")
        gateway.set_default_issuer(mount, default[0])
    except BaseException:
        _remove_partial(gateway, mount, imported, key_id)
        raise


def _remove_partial(gateway: VaultGateway, mount: str, imported: dict[str, str], key_id: str) -> None:
    with contextlib.suppress(VaultError):  # the original error is the one to report
        for issuer in imported:
            gateway.delete_issuer(mount, issuer)
        gateway.delete_key(mount, key_id)
