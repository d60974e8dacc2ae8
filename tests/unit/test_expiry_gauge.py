"""ExpiryGauge: a label set read no more (a CA retired by ca rotate, a Vault node gone) leaves /metrics."""

from __future__ import annotations

from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Gauge

from vaultk8s.agent.metrics import AgentMetrics
from vaultk8s.serve.gauges import ExpiryGauge


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def test_each_observation_replaces_the_label_sets_of_its_scope_only():
    registry = CollectorRegistry()
    gauge = ExpiryGauge(Gauge("t_expiry", "t", ["node", "ca"], registry=registry))
    gauge.observe(("n1",), {("old",): _at(100), ("new",): _at(200)})
    gauge.observe(("n2",), {("old",): _at(100)})
    gauge.observe(("n1",), {("new",): _at(300)})  # n1 retired the old root
    assert registry.get_sample_value("t_expiry", {"node": "n1", "ca": "old"}) is None
    assert registry.get_sample_value("t_expiry", {"node": "n1", "ca": "new"}) == 300
    assert registry.get_sample_value("t_expiry", {"node": "n2", "ca": "old"}) == 100  # another scope stays


def test_a_process_with_one_identity_uses_the_empty_scope():
    registry = CollectorRegistry()
    gauge = ExpiryGauge(Gauge("t_tls", "t", ["kind", "name"], registry=registry))
    gauge.observe((), {("vault-tls", "a"): _at(5), ("vault-tls", "b"): _at(6)})
    gauge.observe((), {("vault-tls", "b"): _at(7)})
    assert registry.get_sample_value("t_tls", {"kind": "vault-tls", "name": "a"}) is None
    assert registry.get_sample_value("t_tls", {"kind": "vault-tls", "name": "b"}) == 7


def test_the_agents_vault_tls_gauge_drops_a_node_that_did_not_answer():
    metrics = AgentMetrics()
    metrics.observe_vault_tls("w1", {("vault-tls", "https://a serving certificate"): _at(10),
                                     ("vault-tls", "https://b serving certificate"): _at(20)})
    metrics.observe_vault_tls("w1", {("vault-tls", "https://b serving certificate"): _at(20)})
    samples = {s.labels["name"] for m in metrics.registry.collect() for s in m.samples
               if s.name == "vaultk8s_vault_tls_expiry_timestamp_seconds"}
    assert samples == {"https://b serving certificate"}
