"""Smoke test of tests/helpers/prometheus.py: a real Prometheus scrapes a real `vaultk8s agent`
(--metrics-port, against the session's OpenBao) every second and evaluates a rule file written here;
the alerts fire, and stop firing the right way when the agent goes away. `promtool test rules` runs
on a tiny unit-test file, once passing and once failing."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers.ports import find_free_port
from tests.helpers.agent import node_env, start_agent, stop_agent, wait_for  # noqa: F401 (fixture)
from tests.helpers.prometheus import Prometheus, promtool

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                                 reason="prometheus/promtool are not installed (Debian prometheus; scripts/setup.sh)")]

JOB = "vaultk8s-agent"
RULES = textwrap.dedent(f"""\
    groups:
      - name: harness
        rules:
          - alert: AgentUp
            expr: up{{job="{JOB}"}} == 1
            for: 0s
          - alert: AgentDown
            expr: up{{job="{JOB}"}} == 0
            for: 0s
          - alert: AgentRenewed
            expr: vaultk8s_agent_rounds_total{{result="success"}} >= 1
            for: 0s
            labels: {{severity: info}}
    """)

UNIT = textwrap.dedent(f"""\
    rule_files: [rules.yml]
    evaluation_interval: 1m
    tests:
      - interval: 1m
        input_series:
          - series: 'up{{job="{JOB}", instance="n:1"}}'
            values: '1 1 0 0'
        alert_rule_test:
          - eval_time: 1m
            alertname: AgentUp
            exp_alerts: [{{exp_labels: {{job: {JOB}, instance: "n:1"}}}}]
          - eval_time: 1m
            alertname: AgentDown
            exp_alerts: []
          - eval_time: 3m
            alertname: AgentDown
            exp_alerts: [{{exp_labels: {{job: {JOB}, instance: "n:1"}}}}]
    """)


def not_after(pem_file: Path) -> float:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).not_valid_after_utc.timestamp()


@pytest.fixture
def rules(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(RULES)
    return path


def test_alert_fires_on_a_real_agent_scrape(node_env, rules, tmp_path):  # noqa: F811
    path, _, creds, env, out = node_env
    port = find_free_port()
    t0 = time.monotonic()
    agent = start_agent(env, "-c", str(path), "--node", "worker-1", "--out", str(out), "--credentials", str(creds),
                        "--metrics-port", str(port), log=tmp_path / "agent.log")
    prom = Prometheus(tmp_path / "prom", {JOB: [f"127.0.0.1:{port}"]}, [rules], interval="1s")
    try:
        prom.start()
        print(f"[timing] prometheus ready: {time.monotonic() - t0:.1f}s after the agent started")
        assert prom.wait_targets_up(timeout=30) == {f"{JOB}/127.0.0.1:{port}": True}
        print(f"[timing] target up: {time.monotonic() - t0:.1f}s")
        took = prom.wait_for_alert("AgentUp", timeout=30)
        print(f"[timing] AgentUp firing: {took:.1f}s of waiting, {time.monotonic() - t0:.1f}s in all")
        assert prom.wait_for_alert("AgentRenewed", timeout=30) >= 0  # the agent's first round succeeded
        assert "AgentDown" not in prom.alerts()
        [sample] = prom.query(f'vaultk8s_agent_rounds_total{{job="{JOB}",node="worker-1",result="success"}}')
        assert float(sample["value"][1]) >= 1
        assert all(r["health"] == "ok" for r in prom.rules())
        # Vault's own TLS, read by the agent's round: the dev server's listener certificate and its CA
        cacert = Path(env["VAULT_CACERT"])
        tls = {s["metric"]["kind"]: float(s["value"][1])
               for s in prom.query(f'vaultk8s_vault_tls_expiry_timestamp_seconds{{job="{JOB}",node="worker-1"}}')}
        assert tls == {"vault-tls": not_after(cacert.with_name("server.pem")), "vault-ca": not_after(cacert)}

        assert stop_agent(agent) == 0, (tmp_path / "agent.log").read_text()[-2000:]
        took = prom.wait_for_alert("AgentDown", timeout=30)
        print(f"[timing] AgentDown firing {took:.1f}s after the agent stopped")
        wait_for("AgentUp to resolve", lambda: "AgentUp" not in prom.alerts(), timeout=30)
        assert prom.targets_up() == {f"{JOB}/127.0.0.1:{port}": False}
    finally:
        prom.stop()
        stop_agent(agent)
    assert prom.proc.returncode == 0, prom.log_tail()


def test_promtool_checks_and_unit_tests_rules(rules, tmp_path):
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout

    (tmp_path / "unit.yml").write_text(UNIT)
    passed = promtool("test", "rules", "unit.yml", cwd=tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr

    (tmp_path / "wrong.yml").write_text(UNIT.replace("eval_time: 3m", "eval_time: 0m"))  # up was 1 then
    failed = promtool("test", "rules", "wrong.yml", cwd=tmp_path)
    assert failed.returncode == 1 and "FAILED" in failed.stdout + failed.stderr, failed.stdout + failed.stderr

    (tmp_path / "broken.yml").write_text(RULES.replace("== 0", "== =0"))
    assert promtool("check", "rules", str(tmp_path / "broken.yml")).returncode == 1
