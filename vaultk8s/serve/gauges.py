"""Timestamp gauges whose label sets come and go between observations (a CA retired, a Vault node gone)."""

from __future__ import annotations

from datetime import datetime

from prometheus_client import Gauge


class ExpiryGauge:
    """Each observe() sets the times read now and removes the label sets no longer read, per scope
    (the agent's node; () for a process with one identity)."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self._held: dict[tuple[str, ...], set[tuple[str, ...]]] = {}

    def observe(self, scope: tuple[str, ...], times: dict[tuple[str, ...], datetime]) -> None:
        for labels in self._held.get(scope, set()) - set(times):
            self.gauge.remove(*scope, *labels)
        for labels, when in times.items():
            self.gauge.labels(*scope, *labels).set(when.timestamp())
        self._held[scope] = set(times)


VAULT_TLS_HELP = ("When Vault's own TLS expires: a certificate a Vault node serves (kind vault-tls) or one in "
                  "VAULT_CACERT (vault-ca). vaultk8s renews neither.")
