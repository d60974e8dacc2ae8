"""The signer's Prometheus metrics and the heartbeat its /healthz reports (served by vaultk8s.serve)."""

from __future__ import annotations

import time
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge

from vaultk8s.serve.gauges import VAULT_TLS_HELP, ExpiryGauge


class SignerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.signed = Counter("vaultk8s_signer_signed", "CSRs signed, by signer name.", ["signer"], registry=r)
        self.approved = Counter("vaultk8s_signer_approved", "kubelet-serving CSRs approved (--approve-serving).",
                                registry=r)
        self.denied = Counter("vaultk8s_signer_denied", "CSRs denied, by reason.", ["reason"], registry=r)
        self.failed = Counter("vaultk8s_signer_failed", "Approved CSRs refused with a Failed condition, by reason.",
                              ["reason"], registry=r)
        self.retries = Counter("vaultk8s_signer_transient_errors", "Transient errors retried with backoff, by "
                               "component.", ["component"], registry=r)
        self.leader = Gauge("vaultk8s_signer_leader", "1 while this replica holds the lease.", registry=r)
        self.last_sync = Gauge("vaultk8s_signer_last_sync_timestamp_seconds", "End of the last full list of CSRs.",
                               registry=r)
        self.last_login = Gauge("vaultk8s_signer_last_login_timestamp_seconds", "Last successful Vault login, by "
                                "method (jwt, approle, token).", ["method"], registry=r)
        self.login_failures = Counter("vaultk8s_signer_login_failures", "Failed Vault logins, by method and reason "
                                      "(rejected: Vault refused the credential).", ["method", "reason"], registry=r)
        self.token_expiry = Gauge("vaultk8s_signer_vault_token_expiry_timestamp_seconds", "When the Vault token of "
                                  "the last login expires (0: never).", registry=r)
        self.credential_expiry = Gauge("vaultk8s_signer_credential_expiry_timestamp_seconds", "When the login "
                                       "credential stops working, by credential (jwt, secret_id).", ["credential"],
                                       registry=r)
        self.vault_tls_expiry = Gauge("vaultk8s_vault_tls_expiry_timestamp_seconds", VAULT_TLS_HELP, ["kind", "name"],
                                      registry=r)
        self.vault_tls = ExpiryGauge(self.vault_tls_expiry)  # read at each login
        self.credential_issued = Gauge("vaultk8s_signer_credential_issued_timestamp_seconds", "When the login "
                                       "credential was made, by credential (secret_id).", ["credential"], registry=r)

    def logged_in(self, method: str, now: float, lease_seconds: int) -> None:
        self.last_login.labels(method).set(now)
        self.token_expiry.set(now + lease_seconds if lease_seconds else 0)


class Heartbeat:
    """The loop beats each pass; health fails when it has not beaten for `limit` seconds."""

    def __init__(self, limit: float, monotonic: Callable[[], float] = time.monotonic):
        self.limit, self.monotonic = limit, monotonic
        self._last = monotonic()

    def beat(self) -> None:
        self._last = self.monotonic()

    def alive(self) -> bool:
        return self.monotonic() - self._last < self.limit
