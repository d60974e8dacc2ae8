"""Prometheus metrics of the agent, in a registry of its own (served by vaultk8s.serve.HealthServer)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from vaultk8s.errors import PermissionDeniedError, VaultError, VaultRequestRefused
from vaultk8s.ops.renew import RenewalResult
from vaultk8s.serve.gauges import VAULT_TLS_HELP, ExpiryGauge

REJECTED = "rejected"  # Vault answered and refused the credential (400/403)
UNANSWERED = "error"  # anything else: unreachable, sealed, a broken connection


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.expiry = Gauge("vaultk8s_certificate_expiry_timestamp_seconds", "When a certificate expires.",
                            ["node", "file"], registry=self.registry)
        self.not_before = Gauge("vaultk8s_certificate_not_before_timestamp_seconds", "When a certificate's life "
                                "began (with the expiry: how much of it is left).", ["node", "file"],
                                registry=self.registry)
        self.ca_expiry = Gauge("vaultk8s_ca_expiry_timestamp_seconds", "When a CA certificate this node trusts "
                               "expires (every root in its bundles).", ["node", "ca", "subject"], registry=self.registry)
        self.next_renewal = Gauge("vaultk8s_certificate_next_renewal_timestamp_seconds",
                                  "When the agent will renew a certificate.", ["node", "file"], registry=self.registry)
        self.rounds = Counter("vaultk8s_agent_rounds", "Renewal rounds by result.", ["node", "result"],
                              registry=self.registry)
        self.renewed = Counter("vaultk8s_certificates_renewed", "Certificates written by the agent.", ["node"],
                               registry=self.registry)
        self.last_success = Gauge("vaultk8s_agent_last_success_timestamp_seconds", "End of the last good round.",
                                  ["node"], registry=self.registry)
        self.failing_since = Gauge("vaultk8s_agent_failing_since_timestamp_seconds",
                                   "Start of the current run of failed rounds; 0 when the last round succeeded.",
                                   ["node"], registry=self.registry)
        self.last_login = Gauge("vaultk8s_agent_last_login_timestamp_seconds", "The last successful Vault login, "
                                "by method (cert: the node's certificate, approle: the enrolment secret_id).",
                                ["node", "method"], registry=self.registry)
        self.login_failures = Counter("vaultk8s_agent_login_failures", "Failed Vault logins by method and reason "
                                      "(rejected: Vault refused the credential).", ["node", "method", "reason"],
                                      registry=self.registry)
        self.leaf_ttl = Gauge("vaultk8s_agent_leaf_ttl_seconds", "The lifetime of the leaves the agent renews "
                              "(pki.leaf_ttl).", ["node"], registry=self.registry)
        self.credential_expiry = Gauge("vaultk8s_credential_expiry_timestamp_seconds", "When a credential the agent "
                                       "logs in with expires (certificate; enrolment while held).",
                                       ["node", "credential"], registry=self.registry)
        self.vault_tls_expiry = Gauge("vaultk8s_vault_tls_expiry_timestamp_seconds", VAULT_TLS_HELP,
                                      ["node", "kind", "name"], registry=self.registry)
        self._vault_tls = ExpiryGauge(self.vault_tls_expiry)
        self._cas = ExpiryGauge(self.ca_expiry)
        self._expiries: dict[str, dict[str, datetime]] = {}
        self._failing_since: dict[str, float] = {}

    def start(self, node: str, methods: tuple[str, ...]) -> None:
        """Every login-failure series exists from the start at 0: Prometheus's increase() cannot
        see a counter's first failure in a series that appears already at 1."""
        for method in methods:
            for reason in (REJECTED, UNANSWERED):
                self.login_failures.labels(node, method, reason)

    def observe(self, node: str, result: RenewalResult, now: datetime) -> None:
        for name, when in result.expiries.items():
            self.expiry.labels(node, name).set(when.timestamp())
        for name, when in result.not_befores.items():
            self.not_before.labels(node, name).set(when.timestamp())
        self._cas.observe((node,), result.ca_expiries)  # a root retired by ca rotate leaves with it
        for name, when in result.next_renewals.items():
            self.next_renewal.labels(node, name).set(when.timestamp())
        self._expiries[node] = dict(result.expiries)
        self.rounds.labels(node, "success").inc()
        self.renewed.labels(node).inc(len([n for n in result.renewed if n.endswith(".crt")]))
        self.last_success.labels(node).set(now.timestamp())
        self.failing_since.labels(node).set(0)
        self._failing_since[node] = 0.0

    def observe_vault_tls(self, node: str, expiries: dict[tuple[str, str], datetime]) -> None:
        """(kind, name) -> end, as read this round: a node that did not answer (or a certificate gone
        from VAULT_CACERT) leaves the metrics until it is read again."""
        self._vault_tls.observe((node,), expiries)

    def failed(self, node: str, now: datetime) -> None:
        self.rounds.labels(node, "failure").inc()
        if not self._failing_since.get(node):
            self._failing_since[node] = now.timestamp()
            self.failing_since.labels(node).set(now.timestamp())

    def login_failed(self, node: str, method: str, err: VaultError) -> None:
        reason = REJECTED if isinstance(err, (VaultRequestRefused, PermissionDeniedError)) else UNANSWERED
        self.login_failures.labels(node, method, reason).inc()

    def expiries(self, node: str) -> list[datetime]:
        return list(self._expiries.get(node, {}).values())
