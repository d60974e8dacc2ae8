"""How the agent logs in each round: the node's own certificate once enrolled, the enrolment
secret_id until then (docs/identity.md).

1. `pki/kubelet-client.crt` + `.key` present and valid now: Vault's cert auth, entry `node-<node>`
   (no secret involved: the key never leaves the node, the certificate lives a leaf's lifetime);
2. otherwise the enrolment secret_id in the credentials directory (`secret_id`, or
   `secret_id.wrapped`, unwrapped once): AppRole;
3. neither: CredentialError, one line naming `vaultk8s node credentials` to enrol again.

After a good round, while the directory still holds the enrolment secret_id, `enrolled` makes sure
the certificate login works (this round used it, or a proof login now), then destroys the
secret_id in Vault and deletes its file: from then on a copy of the directory is useless. Until the
certificate logs in the secret_id is kept (its lifetime, `policy.secret_id_ttl`, still bounds it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from vaultk8s import catalog, crypto
from vaultk8s.agent.metrics import AgentMetrics
from vaultk8s.catalog import PKI_DIR
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import CredentialError, PermissionDeniedError, VaultError, VaultK8sError, VaultRequestRefused
from vaultk8s.ops import node as node_ops
from vaultk8s.plan import naming
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

log = logging.getLogger("vaultk8s.agent")

CERT = "cert"
APPROLE = "approle"


@dataclass(frozen=True)
class Login:
    method: str  # CERT or APPROLE
    secret_id: str | None = None  # the enrolment secret_id this round used (APPROLE)


@dataclass(frozen=True)
class LoginCert:
    """The node's kubelet-client pair on disk, and what is wrong with it now (None: usable)."""

    cert_file: Path
    key_file: Path
    cert: x509.Certificate | None
    problem: str | None


def login_cert(output: NodeOutput, now: datetime) -> LoginCert:
    spec = catalog.cert(catalog.LOGIN_CERT)
    pki = output.root / PKI_DIR
    cert_file, key_file = pki / f"{spec.file_base}.crt", pki / f"{spec.file_base}.key"
    data = output.read_pki(cert_file.name)
    if data is None or output.read_pki(key_file.name) is None:
        return LoginCert(cert_file, key_file, None, f"it holds no {cert_file.name} yet")
    try:
        cert = crypto.load_certs(data)[0]
    except (ValueError, IndexError):
        return LoginCert(cert_file, key_file, None, f"its {cert_file.name} is not a readable certificate")
    if cert.not_valid_after_utc <= now:
        return LoginCert(cert_file, key_file, cert, f"its certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z")
    return LoginCert(cert_file, key_file, cert, None)


@dataclass
class NodeLogin:
    """One node's logins against one cluster; records each attempt in metrics."""

    config: ClusterConfig
    node: str
    output: NodeOutput
    credentials_dir: Path
    metrics: AgentMetrics

    def login(self, gateway: VaultGateway, now: datetime) -> Login:
        """Give gateway a token of this node's identity; raises with one line when nothing logs in."""
        held = login_cert(self.output, now)
        if held.cert is not None:
            self.metrics.credential_expiry.labels(self.node, "certificate").set(held.cert.not_valid_after_utc.timestamp())
        problem = held.problem
        if problem is None:
            try:
                gateway.use_token(self._cert_token(gateway, held))
                return self._logged_in(CERT, now)
            except (VaultRequestRefused, PermissionDeniedError) as err:
                problem = f"Vault refused its certificate login ({err})"
        if node_ops.holds_enrolment(self.credentials_dir):
            secret_id = self._approle(gateway)
            self._note_enrolment_expiry(gateway, secret_id)
            return self._logged_in(APPROLE, now, secret_id)
        raise CredentialError(f"node {self.node}: {problem} and {self.credentials_dir} holds no enrolment credential: "
                              f"run `vaultk8s node credentials --node {self.node} --out {self.credentials_dir}` "
                              "to enrol it again")

    def enrolled(self, gateway: VaultGateway, login: Login, now: datetime) -> None:
        """After a good round, while the directory still holds the enrolment secret_id: once the
        certificate logs in (this round, or a proof now), destroy the secret_id and its file."""
        if not node_ops.holds_enrolment(self.credentials_dir):
            return
        if login.method != CERT and not self._cert_login_proven(gateway, now):
            return
        try:
            self._destroy(gateway, login.secret_id or node_ops.enrolment_secret_id(self.credentials_dir, gateway))
        except VaultK8sError as err:  # the round's renewals stand; the next round tries again
            log.warning("enrolment secret_id kept: cannot destroy it: %s", err)
            return
        self.metrics.credential_expiry.remove(self.node, "enrolment")
        try:
            node_ops.forget_enrolment(self.credentials_dir)
        except VaultK8sError as err:  # destroyed in Vault already: the file is useless, not a failure
            log.warning("%s; it is destroyed in Vault, so only the file is left", err)
            return
        log.info("enrolled: node %s logs in with its certificate; its enrolment secret_id is destroyed", self.node)

    def _destroy(self, gateway: VaultGateway, secret_id: str) -> None:
        am = node_ops.read_approle_mount(self.credentials_dir)
        try:
            gateway.destroy_secret_id(am, naming.approle_role(self.node), secret_id)
        except VaultRequestRefused as err:  # expired or destroyed already: it cannot log in either way
            log.info("enrolment secret_id already unusable: %s", err)

    def _cert_login_proven(self, gateway: VaultGateway, now: datetime) -> bool:
        held = login_cert(self.output, now)
        try:
            if held.problem is not None:
                raise CredentialError(held.problem)
            _drop(gateway, self._cert_token(gateway, held))
            return True
        except VaultK8sError as err:
            log.warning("enrolment secret_id kept: the certificate login does not work yet: %s", err)
            return False

    def _cert_token(self, gateway: VaultGateway, held: LoginCert) -> str:
        try:
            return gateway.login_cert(naming.cert_mount(self.config), naming.cert_entry(self.node),
                                      str(held.cert_file), str(held.key_file))
        except VaultError as err:
            self.metrics.login_failed(self.node, CERT, err)
            raise

    def _approle(self, gateway: VaultGateway) -> str:
        try:
            token, secret_id = node_ops.approle_login(self.credentials_dir, gateway)
        except VaultError as err:
            self.metrics.login_failed(self.node, APPROLE, err)
            raise
        gateway.use_token(token)
        return secret_id

    def _note_enrolment_expiry(self, gateway: VaultGateway, secret_id: str) -> None:
        am = node_ops.read_approle_mount(self.credentials_dir)
        try:
            found = gateway.lookup_secret_id(am, naming.approle_role(self.node), secret_id) or {}
        except VaultError as err:  # a metric only: the round goes on
            log.warning("cannot read the enrolment secret_id's expiry: %s", err)
            return
        when = _parse_time(found.get("expiration_time"))
        if when is not None:
            self.metrics.credential_expiry.labels(self.node, "enrolment").set(when.timestamp())

    def _logged_in(self, method: str, now: datetime, secret_id: str | None = None) -> Login:
        self.metrics.last_login.labels(self.node, method).set(now.timestamp())
        return Login(method, secret_id)


def _drop(gateway: VaultGateway, token: str) -> None:
    try:
        gateway.revoke_token(token)
    except VaultK8sError as err:
        log.warning("%s", err)


def _parse_time(text: object) -> datetime | None:
    """Vault's RFC 3339 times; its zero time (no expiry) is None."""
    if not isinstance(text, str) or text.startswith("0001-"):
        return None
    try:  # Vault writes nanoseconds; Python reads up to microseconds
        return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00"))
    except ValueError:
        return None
