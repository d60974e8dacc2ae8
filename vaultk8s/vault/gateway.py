"""The only module that talks to Vault: a small gateway over hvac with the calls vaultk8s uses.

hvac's quirks are wrapped here once: 204 responses, InvalidPath on empty LISTs, no retries of its
own (we give it a requests.Session, vault/session.py, with urllib3 Retry, and vault/failover.py's adapter for HA
failovers), and exceptions that carry URLs but no advice. Every failure leaves as a VaultError
with a one-line message.

Retries: every method here is either repeatable (reads, deletes, and writes marked with
`repeatable()`: upserts of roles, policies and config, and signing a CSR, whose repeat at worst
leaves a spare short-lived certificate nobody holds the key of), or is repeated only when the
request certainly never reached a server (a root, an intermediate key, a secret_id, a token, a
login, an unwrap, an alias, a mount). The service-account KV write is check-and-set and, on an
ambiguous failure, re-reads the secret to learn whether it landed (kv2_write).
"""

from __future__ import annotations

import contextlib
import os
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit

import hvac
import hvac.exceptions as hv
import requests
from cryptography import x509
from urllib3.util.retry import Retry

from vaultk8s.errors import PermissionDeniedError, PlanRefused, VaultError, VaultRequestRefused, shown
from vaultk8s.hostnames import url_port
from vaultk8s.vault.failover import AMBIGUOUS, FailoverAdapter, classify, missing_mounts_answered_at_once, repeatable
from vaultk8s.vault.session import vault_session

# 502-504 and 429 come from proxies, standbys and rate limits before a request was processed, so
# retrying even a POST is safe; a 500 or a read error may have done the work and is not retried
# here (failover.py decides per call).
_RETRY = Retry(
    total=6, connect=5, read=0, status=4, backoff_factor=0.25, backoff_max=2.0,
    status_forcelist=(429, 502, 503, 504),
    allowed_methods=frozenset({"GET", "HEAD", "LIST", "PUT", "POST", "DELETE", "OPTIONS"}),
    respect_retry_after_header=True, raise_on_status=False,
)


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    token: str | None
    cacert: str | None
    namespace: str | None
    skip_verify: bool = False

    def __repr__(self) -> str:  # keep the token out of logs and tracebacks
        return f"VaultSettings(addr={self.addr!r}, namespace={self.namespace!r})"


def settings_from_env(env: Mapping[str, str] | None = None) -> VaultSettings:
    """VAULT_* variables, falling back to OpenBao's BAO_* names (hvac reads neither itself)."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        return env.get(f"VAULT_{name}") or env.get(f"BAO_{name}") or None

    addr = get("ADDR")
    if not addr:
        raise VaultError("VAULT_ADDR is not set: export VAULT_ADDR (and VAULT_TOKEN), e.g. via `eval \"$(vaultk8s dev up)\"`")
    token, cacert = get("TOKEN"), get("CACERT")
    _check_addr(addr)
    if token is not None and (token != token.strip() or any(c.isspace() or ord(c) < 32 for c in token)):
        raise VaultError("VAULT_TOKEN holds whitespace or a newline (a file read with its line end?): strip it")
    if cacert is not None:
        _check_cacert(cacert)
    return VaultSettings(
        addr=addr.rstrip("/"),
        token=token,
        cacert=cacert,
        namespace=get("NAMESPACE"),
        skip_verify=(get("SKIP_VERIFY") or "").lower() in ("1", "true"),
    )


def _check_addr(addr: str) -> None:
    """VAULT_ADDR is scheme://host[:port] and nothing else; a credential in it would end up in logs."""
    parts = urlsplit(addr)
    port = url_port(parts)
    if parts.username is not None or "@" in parts.netloc:
        raise VaultError("VAULT_ADDR must not hold a user name or password: use VAULT_TOKEN")
    if parts.scheme not in ("http", "https") or not parts.hostname or port in (-1, 0) \
            or parts.query or parts.fragment or any(c.isspace() for c in addr):
        raise VaultError(f"VAULT_ADDR {shown(addr)} must look like https://HOST:PORT")


def _check_cacert(path: str) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
    except OSError as err:
        raise VaultError(f"VAULT_CACERT={shown(path)}: {err.strerror}") from None
    try:
        x509.load_pem_x509_certificates(head)
    except ValueError:
        raise VaultError(f"VAULT_CACERT={shown(path)} holds no readable PEM certificate") from None


# Connections kept per Vault address: bootstrap's default 32 workers, the main thread and a spare
# (ops/defaults.py). Fewer, and each request past them makes and drops a TLS connection with a
# "Connection pool is full" warning; the CLI sizes it to --workers + 2.
DEFAULT_POOL_SIZE = 34

# A node named by sys/ha-status may be unreachable from here (behind a load balancer): bounded.
TLS_PROBE_SECONDS = 5


def make_client(settings: VaultSettings, pool_size: int = DEFAULT_POOL_SIZE) -> hvac.Client:
    session = vault_session(settings.addr, settings.cacert, settings.skip_verify, _RETRY, pool_size)
    # token="" not None: with None hvac falls back to VAULT_TOKEN / ~/.vault-token behind our back.
    return hvac.Client(
        url=settings.addr, token=settings.token or "", verify=session.verify, session=session,
        namespace=settings.namespace, timeout=30, adapter=FailoverAdapter,
    )


class VaultGateway:
    """The Vault calls vaultk8s makes. Reads return None for "not there"; writes return nothing."""

    def __init__(self, client: hvac.Client, addr: str | None = None, cacert: str | None = None):
        self.client = client
        self.addr = addr or client.url
        self.cacert = cacert  # VAULT_CACERT: the file the client trusts Vault's listener by

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, pool_size: int = DEFAULT_POOL_SIZE) -> "VaultGateway":
        settings = settings_from_env(env)
        return cls(make_client(settings, pool_size), settings.addr, settings.cacert)

    # --- connection ---------------------------------------------------------------------------

    def check_ready(self) -> None:
        """Reachable, initialised, unsealed, and the token is valid: or one line saying which not."""
        with self._translate("read health of", "sys/health"):
            health = self.client.sys.read_health_status(method="GET")
            data = health.json() if isinstance(health, requests.Response) else health
            if not isinstance(data, dict):
                raise ValueError("not a health document")
        if not data.get("initialized", True):
            raise VaultError(f"Vault at {self.addr} is not initialised: run `bao operator init` (or `vaultk8s dev up`)")
        if data.get("sealed"):
            raise VaultError(f"Vault at {self.addr} is sealed: unseal it (or run `vaultk8s dev up`) and retry")
        if not self.client.token:
            raise VaultError("VAULT_TOKEN is not set: export a token for Vault")
        with self._translate("look up", "auth/token/lookup-self"):
            self.client.auth.token.lookup_self()
        self._learn_peers()

    def _learn_peers(self) -> None:
        """Other HA nodes to continue on if ours dies (best effort: tokens may not read ha-status)."""
        adapter = self.client.adapter
        if not isinstance(adapter, FailoverAdapter):
            return
        addrs: list[str] = []
        with contextlib.suppress(hv.VaultError, requests.RequestException, AttributeError, TypeError):
            addrs.append(self.client.sys.read_leader_status().get("leader_address") or "")
        with contextlib.suppress(hv.VaultError, requests.RequestException, AttributeError, TypeError):
            addrs += [n.get("api_address") or "" for n in self.client.read("sys/ha-status").get("nodes") or []]
        adapter.remember_peers(list(dict.fromkeys(addrs)))

    # --- Vault's own TLS ---------------------------------------------------------------------------

    def addresses(self) -> list[str]:
        """VAULT_ADDR, then the HA nodes check_ready learnt: each serves its own listener certificate."""
        adapter = self.client.adapter
        found = [self.addr]
        if isinstance(adapter, FailoverAdapter):
            found += [adapter.base_uri, *adapter.peers()]
        return list(dict.fromkeys(found))

    def served_certificate_pem(self, addr: str) -> str | None:
        """The certificate the listener at addr serves, read but not verified (only its dates are wanted;
        every API call verifies it); None for plain http://."""
        parts = urlsplit(addr)
        if parts.scheme != "https":
            return None
        try:
            return ssl.get_server_certificate((parts.hostname, url_port(parts) or 443), timeout=TLS_PROBE_SECONDS)
        except OSError as err:
            raise VaultError(f"cannot read the TLS certificate served at {addr}: {err.strerror or err}") from None

    def trusted_ca_pem(self) -> bytes | None:
        """VAULT_CACERT's certificates, the ones the client trusts the listener by; None when unset."""
        if not self.cacert:
            return None
        try:
            with open(self.cacert, "rb") as handle:
                return handle.read()
        except OSError as err:
            raise VaultError(f"VAULT_CACERT={shown(self.cacert)}: {err.strerror}") from None

    # --- the hvac calls, once: "not there" as None, upserts marked repeatable ---------------------

    def _get(self, action: str, where: str, call: Callable[[], Any],
             absent: tuple[type[Exception], ...] = (hv.InvalidPath,)) -> Any:
        """call()'s answer, or None when Vault says nothing is there: hvac raises InvalidPath for a
        404 and for a LIST of a path without keys; callers name the other "none" answers (absent)."""
        with self._translate(action, where):
            try:
                return call()
            except absent:
                return None

    def _read_data(self, path: str, action: str, where: str | None = None,
                   absent: tuple[type[Exception], ...] = (hv.InvalidPath,)) -> dict[str, Any] | None:
        """The `data` of a GET; None when the path does not exist (absent=(): that is an error)."""
        return (self._get(action, where or path, lambda: self.client.read(path), absent) or {}).get("data")

    def _list_data(self, path: str, action: str, where: str | None = None) -> dict[str, Any]:
        """The `data` of a LIST (`keys`, with `key_info` for some); {} when there is nothing."""
        return (self._get(action, where or path, lambda: self.client.list(path)) or {}).get("data") or {}

    def _list_keys(self, path: str, action: str, where: str | None = None) -> list[str]:
        return list(self._list_data(path, action, where).get("keys") or [])

    def _post(self, path: str, data: dict[str, Any], action: str, where: str | None = None, *,
              repeat: bool = False) -> Any:
        """A write; repeat=True marks an upsert (see the module docstring). The dict is copied:
        hvac mutates what it is given."""
        with self._translate(action, where or path), repeatable() if repeat else contextlib.nullcontext():
            return self.client.write_data(path, data=dict(data))

    def _delete(self, path: str, action: str) -> None:
        with self._translate(action, path):
            self.client.delete(path)

    # --- mounts ---------------------------------------------------------------------------------

    def _mount_info(self, path: str) -> dict[str, Any]:
        """What is mounted at path; {} when the path is free (OpenBao answers 400 "no matching mount")."""
        data = self._get("read", f"sys/mounts/{path}", lambda: self.client.read(f"sys/mounts/{path.strip('/')}"),
                         absent=(hv.InvalidRequest,))
        return (data or {}).get("data") or data or {}

    def mount_type(self, path: str) -> str | None:
        """The engine type mounted at path, or None when the path is free."""
        return self._mount_info(path).get("type")

    def enable_pki(self, path: str, max_ttl_seconds: int, description: str) -> None:
        with self._translate("enable a PKI engine at", path):
            self.client.sys.enable_secrets_engine(
                "pki", path=path, description=description, config={"max_lease_ttl": f"{max_ttl_seconds}s"},
            )

    def mount_max_ttl(self, path: str) -> int:
        with self._translate("read the tuning of", path):
            data = self.client.sys.read_mount_configuration(path)
        return int((data.get("data") or data).get("max_lease_ttl", 0))

    def tune_max_ttl(self, path: str, max_ttl_seconds: int) -> None:
        with self._translate("tune", path), repeatable():
            self.client.sys.tune_mount_configuration(path, max_lease_ttl=f"{max_ttl_seconds}s")

    # --- CA -------------------------------------------------------------------------------------

    def read_ca_pem(self, mount: str) -> str | None:
        """The default issuer's certificate, or None when the mount has no CA yet."""
        # OpenBao answers "no default issuer currently configured" with a 500 or a 400.
        data = self._read_data(f"{mount}/issuer/default/json", "read the CA of", mount,
                               absent=(hv.InternalServerError, hv.InvalidPath, hv.InvalidRequest))
        return (data or {}).get("certificate") or None

    def read_ca_chain_pem(self, mount: str) -> list[str]:
        data = self._read_data(f"{mount}/issuer/default/json", "read the CA chain of", mount, absent=())
        return list((data or {}).get("ca_chain") or [])

    def generate_root(self, mount: str, params: dict[str, Any]) -> str:
        return self._post(f"{mount}/root/generate/internal", params, "generate a root CA in", mount)["data"]["certificate"]

    def generate_intermediate_csr(self, mount: str, params: dict[str, Any]) -> tuple[str, str]:
        """A new key inside the mount and its CSR: returns (csr_pem, key_id)."""
        data = self._post(f"{mount}/intermediate/generate/internal", params, "generate an intermediate CSR in", mount)
        return data["data"]["csr"], data["data"]["key_id"]

    def set_signed_intermediate(self, mount: str, pem_bundle: str) -> dict[str, str]:
        """Import the signed intermediate (and its chain): returns {issuer_id: key_id or ""}."""
        data = self._post(f"{mount}/intermediate/set-signed", {"certificate": pem_bundle},
                          "install the signed intermediate in", mount, repeat=True)
        return dict(((data or {}).get("data") or {}).get("mapping") or {})

    def set_default_issuer(self, mount: str, issuer_id: str) -> None:
        self._post(f"{mount}/config/issuers", {"default": issuer_id}, "set the default issuer of", mount, repeat=True)

    # --- issuers (CA rotation: several issuers in one mount) -----------------------------------------

    def list_issuers(self, mount: str) -> dict[str, dict[str, Any]]:
        """{issuer_id: key_info} (issuer_name, key_id, is_default) of every issuer in the mount."""
        return dict(self._list_data(f"{mount}/issuers", "list issuers of", mount).get("key_info") or {})

    def read_issuer(self, mount: str, ref: str) -> dict[str, Any] | None:
        # OpenBao answers 500 "unable to find PKI issuer" for an unknown ref.
        return self._read_data(f"{mount}/issuer/{ref}", "read issuer", absent=(hv.InvalidPath, hv.InternalServerError))

    def read_issuer_certificate(self, mount: str, ref: str) -> str | None:
        """An issuer's certificate (PEM) from `issuer/<ref>/json`, which PKI serves without a token."""
        data = self._read_data(f"{mount}/issuer/{ref}/json", "read issuer",
                               absent=(hv.InvalidPath, hv.InternalServerError))
        return (data or {}).get("certificate") or None

    def patch_issuer(self, mount: str, ref: str, fields: dict[str, Any]) -> None:
        """PATCH only the given fields: a POST to issuer/<ref> resets the ones it omits (issuer_name)."""
        with self._translate("update issuer", f"{mount}/issuer/{ref}"):
            self.client.adapter.request("PATCH", f"/v1/{mount}/issuer/{ref}", json=dict(fields),
                                        headers={"Content-Type": "application/merge-patch+json"})

    def generate_root_issuer(self, mount: str, params: dict[str, Any]) -> dict[str, Any]:
        """A new root issuer (and key) beside the existing ones; the default issuer is not changed."""
        return self._post(f"{mount}/issuers/generate/root/internal", params, "generate a root issuer in", mount)["data"]

    def cross_sign_csr(self, mount: str, params: dict[str, Any]) -> str:
        """A CSR for an existing key of the mount (key_ref), to be cross-signed by another issuer."""
        return self._post(f"{mount}/intermediate/cross-sign", params, "make a cross-sign CSR in", mount)["data"]["csr"]

    def sign_intermediate(self, mount: str, issuer_ref: str, params: dict[str, Any]) -> str:
        issuer = f"{mount}/issuer/{issuer_ref}"
        return self._post(f"{issuer}/sign-intermediate", params, "sign an intermediate with", issuer)["data"]["certificate"]

    def sign_self_issued(self, mount: str, issuer_ref: str, pem: str) -> str:
        """Another root's self-issued certificate re-signed by this issuer: a cross-signed root."""
        issuer = f"{mount}/issuer/{issuer_ref}"
        return self._post(f"{issuer}/sign-self-issued", {"certificate": pem}, "cross-sign a root with",
                          issuer)["data"]["certificate"]

    def import_issuer_cert(self, mount: str, pem: str) -> list[str]:
        """Import certificate(s) as issuers; returns the ids of those new to the mount."""
        data = self._post(f"{mount}/issuers/import/cert", {"pem_bundle": pem}, "import an issuer into", mount)
        return list(((data or {}).get("data") or {}).get("imported_issuers") or [])

    def import_issuer_bundle(self, mount: str, pem_bundle: str) -> tuple[list[str], list[str]]:
        """Import a CA certificate with its private key (adopt): the (issuer ids, key ids) new to the
        mount; a bundle already there comes back as ([], []). The bundle is secret: it travels in the
        request body only, never in a message."""
        data = self._post(f"{mount}/issuers/import/bundle", {"pem_bundle": pem_bundle}, "import a CA into", mount,
                          repeat=True)
        info = (data or {}).get("data") or {}
        return list(info.get("imported_issuers") or []), list(info.get("imported_keys") or [])

    def name_key(self, mount: str, key_id: str, name: str) -> None:
        self._post(f"{mount}/key/{key_id}", {"key_name": name}, "name key", f"{mount}/key/{key_id}", repeat=True)

    def delete_issuer(self, mount: str, issuer_id: str) -> None:
        self._delete(f"{mount}/issuer/{issuer_id}", "delete issuer")

    def delete_key(self, mount: str, key_id: str) -> None:
        self._delete(f"{mount}/key/{key_id}", "delete key")

    def read_auto_tidy(self, mount: str) -> dict[str, Any]:
        return self._read_data(f"{mount}/config/auto-tidy", "read the auto-tidy settings of", mount, absent=()) or {}

    def write_auto_tidy(self, mount: str, params: dict[str, Any]) -> None:
        self._post(f"{mount}/config/auto-tidy", params, "configure auto-tidy of", mount, repeat=True)

    def read_urls(self, mount: str) -> dict[str, Any]:
        return self._read_data(f"{mount}/config/urls", "read the URLs of", mount, absent=()) or {}

    def write_urls(self, mount: str, params: dict[str, Any]) -> None:
        self._post(f"{mount}/config/urls", params, "configure the URLs of", mount, repeat=True)

    # --- roles and signing ------------------------------------------------------------------------

    def read_role(self, mount: str, name: str) -> dict[str, Any] | None:
        return self._read_data(f"{mount}/roles/{name}", "read role")

    def list_roles(self, mount: str) -> list[str]:
        return self._list_keys(f"{mount}/roles", "list roles of", mount)

    def write_role(self, mount: str, name: str, params: dict[str, Any]) -> None:
        self._post(f"{mount}/roles/{name}", params, "write role", repeat=True)

    def delete_role(self, mount: str, name: str) -> None:
        self._delete(f"{mount}/roles/{name}", "delete role")

    def sign(self, mount: str, role: str, csr_pem: str, ttl_seconds: int) -> dict[str, Any]:
        """Sign a CSR with a role: returns certificate, issuing_ca and ca_chain (PEM)."""
        params = {"csr": csr_pem, "ttl": f"{ttl_seconds}s", "exclude_cn_from_sans": True, "format": "pem"}
        return self._post(f"{mount}/sign/{role}", params, "sign with role", repeat=True)["data"]

    # --- ACL policies --------------------------------------------------------------------------------

    def read_policy(self, name: str) -> str | None:
        return (self._read_data(f"sys/policies/acl/{name}", "read policy") or {}).get("policy")

    def write_policy(self, name: str, text: str) -> None:
        self._post(f"sys/policies/acl/{name}", {"policy": text}, "write policy", repeat=True)

    # --- auth mounts, AppRole, tokens, identity --------------------------------------------------------

    def auth_accessor(self, path: str) -> tuple[str, str] | None:
        """(type, accessor) of the auth method mounted at path, or None."""
        with self._translate("list auth methods at", "sys/auth"):
            data = self.client.sys.list_auth_methods()
        mounts = (data or {}).get("data") or data or {}
        entry = mounts.get(path.strip("/") + "/")
        return (entry["type"], entry["accessor"]) if isinstance(entry, dict) else None

    def enable_auth(self, method: str, path: str, description: str) -> None:
        with self._translate(f"enable {method} auth at", f"sys/auth/{path}"):
            self.client.sys.enable_auth_method(method, description=description, path=path)

    def role_id(self, mount: str, role: str) -> str | None:
        role_path = f"auth/{mount}/role/{role}"
        return (self._read_data(f"{role_path}/role-id", "read the role_id of", role_path) or {}).get("role_id")

    def generate_secret_id(self, mount: str, role: str, wrap_ttl_seconds: int | None = None) -> str:
        """A new secret_id, or (wrap_ttl_seconds) a single-use wrapping token that holds one."""
        path = f"auth/{mount}/role/{role}/secret-id"
        wrap = f"{wrap_ttl_seconds}s" if wrap_ttl_seconds else None
        with self._translate("generate a secret_id at", path):
            data = self.client.write_data(path, data={}, wrap_ttl=wrap)
        if wrap:
            return data["wrap_info"]["token"]
        return data["data"]["secret_id"]

    def list_secret_id_accessors(self, mount: str, role: str) -> list[str]:
        return self._list_keys(f"auth/{mount}/role/{role}/secret-id", "list secret_id accessors at")

    def destroy_secret_id_accessor(self, mount: str, role: str, accessor: str) -> None:
        self._post(f"auth/{mount}/role/{role}/secret-id-accessor/destroy", {"secret_id_accessor": accessor},
                   "destroy a secret_id at", repeat=True)

    def lookup_secret_id_accessor(self, mount: str, role: str, accessor: str) -> dict[str, Any] | None:
        """A secret_id's metadata by its accessor (creation_time, expiration_time, uses): never the secret_id."""
        path = f"auth/{mount}/role/{role}/secret-id-accessor/lookup"
        with self._translate("look up a secret_id at", path):
            try:
                data = self.client.write_data(path, data={"secret_id_accessor": accessor})
            except hv.InvalidPath:
                return None
        return (data or {}).get("data") if isinstance(data, dict) else None

    def list_token_accessors(self) -> list[str]:
        """Every token's accessor in Vault (needs sudo on auth/token/accessors)."""
        return self._list_keys("auth/token/accessors", "list token accessors at")

    def lookup_token_accessor(self, accessor: str) -> dict[str, Any] | None:
        """A token's properties (policies, expire_time, display_name) by accessor; None when it is gone."""
        with self._translate("look up a token at", "auth/token/lookup-accessor"):
            try:
                data = self.client.write_data("auth/token/lookup-accessor", data={"accessor": accessor})
            except (hv.InvalidPath, hv.InvalidRequest):
                return None
        return (data or {}).get("data") if isinstance(data, dict) else None

    def list_approle_roles(self, mount: str) -> list[str]:
        return self._list_keys(f"auth/{mount}/role", "list AppRole roles at")

    def read_approle_role(self, mount: str, role: str) -> dict[str, Any] | None:
        return self._read_data(f"auth/{mount}/role/{role}", "read AppRole role")

    def delete_approle_role(self, mount: str, role: str) -> None:
        """Deleting the role deletes its secret_ids with it; tokens already issued are not revoked."""
        self._delete(f"auth/{mount}/role/{role}", "delete AppRole role")

    def login_approle(self, mount: str, role_id: str, secret_id: str) -> str:
        """A token for role_id/secret_id; this gateway's own token is not changed."""
        with self._translate("log in at", f"auth/{mount}/login"):
            data = self.client.auth.approle.login(role_id, secret_id, use_token=False, mount_point=mount)
        return data["auth"]["client_token"]

    def lookup_secret_id(self, mount: str, role: str, secret_id: str) -> dict[str, Any] | None:
        """The secret_id's properties (expiration_time, uses) for its holder; None when Vault no longer
        knows it. The secret_id goes in the body only."""
        path = f"auth/{mount}/role/{role}/secret-id/lookup"
        data = self._get("look up a secret_id at", path, lambda: self.client.write_data(path, data={"secret_id": secret_id}))
        return (data or {}).get("data") if isinstance(data, dict) else None

    def destroy_secret_id(self, mount: str, role: str, secret_id: str) -> None:
        self._post(f"auth/{mount}/role/{role}/secret-id/destroy", {"secret_id": secret_id}, "destroy a secret_id at",
                   repeat=True)

    def login_cert(self, mount: str, name: str, cert_file: str, key_file: str) -> str:
        """A token for the certificate entry `name`, presenting cert_file/key_file as the TLS client
        certificate (hvac's adapter passes `cert=` to requests); this gateway's own token is not changed."""
        with self._translate("log in at", f"auth/{mount}/login"):
            data = self.client.adapter.login(f"/v1/auth/{mount}/login", use_token=False, json={"name": name},
                                             cert=(cert_file, key_file))
        return data["auth"]["client_token"]

    def list_cert_entries(self, mount: str) -> list[str]:
        return self._list_keys(f"auth/{mount}/certs", "list certificate entries at")

    def read_cert_entry(self, mount: str, name: str) -> dict[str, Any] | None:
        return self._read_data(f"auth/{mount}/certs/{name}", "read certificate entry")

    def write_cert_trust(self, mount: str, name: str, certificate: str) -> None:
        """Only the entry's trusted CA certificates: a write with some fields merges into the entry."""
        self._post(f"auth/{mount}/certs/{name}", {"certificate": certificate}, "write the trust of", repeat=True)

    def delete_cert_entry(self, mount: str, name: str) -> None:
        self._delete(f"auth/{mount}/certs/{name}", "delete certificate entry")
    def login_jwt(self, mount: str, role: str, jwt: str) -> tuple[str, int]:
        """(token, lease seconds) for a JWT (the signer's projected ServiceAccount token); this
        gateway's own token is not changed. The JWT goes in the body only, never in a message."""
        with self._translate("log in at", f"auth/{mount}/login"):
            data = self.client.write_data(f"auth/{mount}/login", data={"role": role, "jwt": jwt})
        auth = data["auth"]
        return auth["client_token"], int(auth.get("lease_duration") or 0)

    def token_ttl(self) -> int:
        """Seconds left on this gateway's own token (0: never expires)."""
        with self._translate("look up", "auth/token/lookup-self"):
            data = self.client.auth.token.lookup_self()
        return int(((data or {}).get("data") or {}).get("ttl") or 0)

    def read_auth_config(self, path: str, *, just_enabled: bool = False) -> tuple[bool, dict[str, Any] | None]:
        """(mounted, config): a 404 with no error is a mount without config yet; one saying "no
        handler for route" means no auth method is mounted there. That is answered at once (a
        cluster without certificate or JWT logins is normal; each bootstrap waited LAG_SECONDS for
        it), unless just_enabled: then it is a standby that has not seen the mount yet, waited out."""
        answer = contextlib.nullcontext() if just_enabled else missing_mounts_answered_at_once()
        with self._translate("read", path), answer:
            try:  # the adapter, not client.read: that one answers None for every 404
                data = self.client.adapter.get(f"/v1/{path}")
                return True, (data.get("data") if isinstance(data, dict) else None)
            except hv.InvalidPath as err:
                return not any("no handler for route" in str(e) for e in (getattr(err, "errors", None) or [])), None

    def write_auth_config(self, path: str, data: dict[str, Any]) -> bool:
        """An upsert of an auth method's config; False when no auth method is mounted there (404)."""
        with self._translate("write", path), repeatable():
            try:
                self.client.write_data(path, data=dict(data))
            except hv.InvalidPath:
                return False
        return True

    def unwrap(self, wrapping_token: str) -> dict[str, Any]:
        """The wrapping token authenticates its own unwrap (single use), so it stands in for ours."""
        own, self.client.token = self.client.token, wrapping_token
        try:
            with self._translate("unwrap", "sys/wrapping/unwrap (already unwrapped or expired?)"):
                data = self.client.sys.unwrap()
        finally:
            self.client.token = own
        return (data or {}).get("data") or {}

    def revoke_token(self, token: str) -> None:
        """Revoke another token of ours (a login made only as a proof) with itself; ours stays in use."""
        own, self.client.token = self.client.token, token
        try:
            self.revoke_self()
        finally:
            self.client.token = own

    def use_token(self, token: str) -> None:
        """Authenticate later calls with token (the agent's own login); never logged."""
        self.client.token = token

    def renew_self(self) -> None:
        with self._translate("renew the token at", "auth/token/renew-self"), repeatable():
            self.client.auth.token.renew_self()

    def revoke_self(self) -> None:
        with self._translate("revoke the token at", "auth/token/revoke-self"):
            self.client.auth.token.revoke_self()

    def create_token(self, token_role: str, params: dict[str, Any]) -> str:
        return self._post(f"auth/token/create/{token_role}", params, "create a token with role")["auth"]["client_token"]

    def list_token_roles(self) -> list[str]:
        return self._list_keys("auth/token/roles", "list token roles at")

    def read_token_role(self, name: str) -> dict[str, Any] | None:
        return self._read_data(f"auth/token/roles/{name}", "read token role")

    def delete_token_role(self, name: str) -> None:
        self._delete(f"auth/token/roles/{name}", "delete token role")

    def list_entity_names(self) -> list[str]:
        return self._list_keys("identity/entity/name", "list entities at")

    def read_entity(self, name: str) -> dict[str, Any] | None:
        return self._read_data(f"identity/entity/name/{name}", "read entity")

    def write_entity(self, name: str, metadata: dict[str, str], *, disabled: bool = False) -> str:
        """Create or update the named entity; returns its id. A disabled entity's aliases cannot log in."""
        self._post(f"identity/entity/name/{name}", {"metadata": dict(metadata), "disabled": disabled}, "write entity",
                   repeat=True)
        entity = self.read_entity(name)
        if not entity:
            raise VaultError(f"entity {name} was written but cannot be read back")
        return entity["id"]

    def delete_entity(self, name: str) -> None:
        self._delete(f"identity/entity/name/{name}", "delete entity")

    def create_entity_alias(self, entity_id: str, mount_accessor: str, alias: str) -> None:
        self._post("identity/entity-alias", {"name": alias, "canonical_id": entity_id, "mount_accessor": mount_accessor},
                   "create an entity alias at")

    # --- KV v2 (service-account keys) ------------------------------------------------------------

    def kv_version(self, path: str) -> str | None:
        """"1" or "2" for a KV engine at path; None when the path is free or holds another engine."""
        info = self._mount_info(path)
        if info.get("type") != "kv":
            return None
        return str((info.get("options") or {}).get("version") or "1")

    def enable_kv2(self, path: str, description: str) -> None:
        with self._translate("enable a KV v2 engine at", path):
            self.client.sys.enable_secrets_engine("kv", path=path, description=description, options={"version": "2"})

    def kv2_read(self, mount: str, path: str) -> tuple[dict[str, Any], int] | None:
        """The current data of a secret and its version, or None when it does not exist (or is deleted)."""
        data = self._get("read", f"{mount}/data/{path}", lambda: self.client.secrets.kv.v2.read_secret_version(
            path, mount_point=mount, raise_on_deleted_version=True))
        if data is None:
            return None
        body = data.get("data") or {}
        return body.get("data") or {}, int((body.get("metadata") or {}).get("version") or 0)

    def kv2_write(self, mount: str, path: str, data: dict[str, Any], cas: int) -> int:
        """Write only if the secret is still at version cas (0: does not exist yet); returns the new version.

        Never replayed blindly: when the answer is lost (failover), the secret is re-read: our data
        at a newer version means our write landed; still at `cas` means it did not and it is sent
        again (still check-and-set); anything else, or a plain check-and-set failure, is refused.
        """
        where = f"{mount}/data/{path}"
        uncertain = False  # an earlier try of ours may have landed
        for _ in range(3):
            try:
                with self._translate("write", where):
                    try:
                        result = self.client.secrets.kv.v2.create_or_update_secret(
                            path, secret=dict(data), cas=cas, mount_point=mount)
                    except hv.InvalidRequest as err:
                        if "check-and-set" not in str(err):
                            raise
                        return self._kv2_settle(mount, path, data, cas, where, uncertain)
                    except (hv.VaultError, requests.RequestException) as err:
                        if classify(err) != AMBIGUOUS:
                            raise
                        uncertain = True
                        return self._kv2_settle(mount, path, data, cas, where, uncertain)
            except _SendAgain:
                continue
            return int(((result or {}).get("data") or {}).get("version") or 0)
        raise VaultError(f"could not write {where}: Vault kept failing while its outcome stayed unknown; re-run")

    def _kv2_settle(self, mount: str, path: str, data: dict[str, Any], cas: int, where: str,
                    uncertain: bool) -> int:
        """After a lost answer (uncertain) or a failed check-and-set: did our write land?"""
        found = self.kv2_read(mount, path) if uncertain else None
        version = found[1] if found else 0
        if found and version > cas and found[0] == dict(data):
            return version  # our write landed; its answer was lost
        if uncertain and version == cas:
            raise _SendAgain()
        raise PlanRefused(
            f"{where} changed in Vault while this command ran (another operator?); "
            "nothing was written to disk: re-run to see the new state"
        )

    def kv2_set_max_versions(self, mount: str, path: str, max_versions: int) -> None:
        """Bound the secret's version history (creates its metadata when the secret does not exist yet)."""
        with self._translate("write", f"{mount}/metadata/{path}"), repeatable():
            self.client.secrets.kv.v2.update_metadata(path, max_versions=max_versions, mount_point=mount)

    def kv2_versions(self, mount: str, path: str) -> tuple[int, list[tuple[int, bool, bool]]] | None:
        """(max_versions, [(version, destroyed, soft_deleted)]) from the secret's metadata; None when absent.

        Metadata only: no secret data is read.
        """
        data = self._get("read", f"{mount}/metadata/{path}",
                         lambda: self.client.secrets.kv.v2.read_secret_metadata(path, mount_point=mount))
        if data is None:
            return None
        body = data.get("data") or {}
        versions = []
        for number, info in (body.get("versions") or {}).items():
            info = info or {}
            versions.append((int(number), bool(info.get("destroyed")), bool(info.get("deletion_time"))))
        return int(body.get("max_versions") or 0), sorted(versions)

    def kv2_destroy(self, mount: str, path: str, versions: list[int]) -> None:
        """Permanently remove the data of these versions (not a soft delete: no undelete, no rollback)."""
        if not versions:
            return
        with self._translate("destroy versions of", f"{mount}/destroy/{path}"), repeatable():
            self.client.secrets.kv.v2.destroy_secret_versions(path, versions=list(versions), mount_point=mount)

    # --- generic (used by the other gateways' callers: KV, policies, auth) ------------------------

    def read(self, path: str) -> dict[str, Any] | None:
        return self._get("read", path, lambda: self.client.read(path))

    def write(self, path: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """An upsert of parameters (AppRole and token roles): repeating it ends in the same state."""
        result = self._post(path, data, "write", repeat=True)
        return result if isinstance(result, dict) else None

    @contextlib.contextmanager
    def _translate(self, action: str, path: str) -> Iterator[None]:
        try:
            yield
        except hv.Forbidden:
            raise PermissionDeniedError(
                f"Vault denied permission to {action} {path} (403): the token is invalid, expired, or its policies do not allow it"
            ) from None
        except hv.VaultDown:
            raise VaultError(f"Vault at {self.addr} is sealed or down: unseal it and retry") from None
        except hv.InvalidRequest as err:
            raise VaultRequestRefused(f"Vault refused to {action} {path}: {_first_error(err)}") from None
        except hv.VaultError as err:
            raise VaultError(f"Vault refused to {action} {path}: {_first_error(err)}") from None
        except requests.exceptions.SSLError:
            raise VaultError(
                f"TLS verification of {self.addr} failed: set VAULT_CACERT to the CA that signed Vault's certificate"
            ) from None
        except requests.exceptions.InvalidHeader:
            # requests validates header values: a token with a newline or space never leaves.
            raise VaultError("VAULT_TOKEN holds whitespace or a newline: strip it and retry") from None
        except ValueError:  # requests' JSONDecodeError too, which is a RequestException too
            raise VaultError(f"{self.addr} did not answer as the Vault API does when asked to {action} {path}: "
                             "check VAULT_ADDR (its scheme, host and port)") from None
        except requests.exceptions.RequestException as err:
            if classify(err) == AMBIGUOUS:  # it may have been done: only a re-run can tell
                raise VaultError(f"the connection to Vault at {self.addr} broke while trying to {action} {path} "
                                 f"({type(err).__name__}); re-run to finish") from None
            raise VaultError(f"cannot reach Vault at {self.addr} ({type(err).__name__}): is it running? check VAULT_ADDR") from None


class _SendAgain(Exception):
    """kv2_write: the lost write provably did not land, so check-and-set may send it again."""


def _first_error(err: hv.VaultError) -> str:
    errors = getattr(err, "errors", None) or [str(err)]
    text = " ".join(str(errors[0]).split())
    return text.split(", on ")[0][:300]
