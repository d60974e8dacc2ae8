"""Prometheus metrics of the agent, in a registry of its own (served by vaultk8s.serve.HealthServer)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge

from vaultk8s.ops.renew import RenewalResult


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.expiry = Gauge("vaultk8s_certificate_expiry_timestamp_seconds", "When a certificate expires.",
                            ["node", "file"], registry=self.registry)
        self.next_renewal = Gauge("vaultk8s_certificate_next_renewal_timestamp_seconds",
                                  "When the agent will renew a certificate.", ["node", "file"], registry=self.registry)
        self.rounds = Counter("vaultk8s_agent_rounds", "Renewal rounds by result.", ["node", "result"],
                              registry=self.registry)
        self.renewed = Counter("vaultk8s_certificates_renewed", "Certificates written by the agent.", ["node"],
                               registry=self.registry)
        self.last_success = Gauge("vaultk8s_agent_last_success_timestamp_seconds", "End of the last good round.",
                                  ["node"], registry=self.registry)
        self._expiries: dict[str, dict[str, datetime]] = {}

    def observe(self, node: str, result: RenewalResult, now: datetime) -> None:
        for name, when in result.expiries.items():
            self.expiry.labels(node, name).set(when.timestamp())
        for name, when in result.next_renewals.items():
            self.next_renewal.labels(node, name).set(when.timestamp())
        self._expiries[node] = dict(result.expiries)
        self.rounds.labels(node, "success").inc()
        self.renewed.labels(node).inc(len([n for n in result.renewed if n.endswith(".crt")]))
        self.last_success.labels(node).set(now.timestamp())

    def failed(self, node: str) -> None:
        self.rounds.labels(node, "failure").inc()

    def expiries(self, node: str) -> list[datetime]:
        return list(self._expiries.get(node, {}).values())
