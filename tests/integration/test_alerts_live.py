"""The shipped alert rules on a real Prometheus (Debian 2.42) scraping a real `vaultk8s agent`.

The node is revoked before its agent starts, so Vault refuses its logins (the certificate entry
is gone, so the agent falls back to its enrolment secret_id, which revoke destroyed). With 10-minute leaves (the shortest a cluster
file allows) "renewal failing for longer than a sixth of the leaf TTL" must fire 100 s after the
first failed round, and "credential rejected" at once. The agent keeps running and keeps trying.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.helpers.ports import find_free_port
from tests.helpers.agent import start_agent, stop_agent
from tests.helpers.policy import applied_cluster, cli
from tests.helpers.prometheus import Prometheus
from tests.helpers.redacted import RedactedEnv

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("prometheus") and shutil.which("promtool")),
                                 reason="prometheus/promtool are not installed (Debian prometheus; scripts/setup.sh)")]

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "vaultk8s-alerts.yml"
NODE = "worker-1"


@pytest.mark.timeout(420)
def test_renewal_failing_fires_when_vault_refuses_the_agents_login(vault_env, tmp_path, mount_prefix):
    path, _, operator = applied_cluster(vault_env, tmp_path, mount_prefix, pki={"leaf_ttl": "10m"})
    creds = tmp_path / "creds"
    made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", NODE, "--out", str(creds))
    assert made.returncode == 0, made.stderr
    revoked = cli(vault_env, "node", "revoke", "-c", str(path), "--node", NODE, token=operator)
    assert revoked.returncode == 0, revoked.stderr
    port = find_free_port()
    no_token = RedactedEnv({k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"})
    log = tmp_path / "agent.log"
    agent = start_agent(no_token, "-c", str(path), "--node", NODE, "--out", str(tmp_path / "out"),
                        "--credentials", str(creds), "--metrics-port", str(port), log=log)
    prom = Prometheus(tmp_path / "prom", {"vaultk8s-agent": [f"127.0.0.1:{port}"]}, [RULES], interval="1s")
    started = time.monotonic()
    try:
        prom.start()
        prom.wait_targets_up(timeout=60)
        took = prom.wait_for_alert("VaultK8sCredentialRejected", timeout=90)
        print(f"[timing] credential rejected firing after {took:.1f}s")
        took = prom.wait_for_alert("VaultK8sRenewalFailing", timeout=240)
        waited = time.monotonic() - started
        print(f"[timing] renewal failing firing {waited:.1f}s after the agent started")
        assert waited >= 100, "fired before a sixth of the 10m leaf TTL had passed"
        failing_since = prom.query("vaultk8s_agent_failing_since_timestamp_seconds")
        assert failing_since and float(failing_since[0]["value"][1]) > 0
        assert agent.poll() is None, log.read_text()[-2000:]
    finally:
        prom.stop()
        stop_agent(agent)
    text = log.read_text()
    assert "Vault refused to log in" in text, text[-2000:]  # each failed round says why, in one line
