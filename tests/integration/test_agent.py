"""The renewal agent with a node's own AppRole credential against a real OpenBao."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers.agent import node_env  # noqa: F401 (fixture)
from tests.helpers.cluster import openssl_verify
from tests.helpers.policy import cli
from vaultk8s import crypto
from vaultk8s.agent.runner import Agent, AgentSettings
from vaultk8s.ops.renew import node_output
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration


def _serial(path: Path) -> int:
    return crypto.load_certs(path.read_bytes())[0].serial_number


def test_once_keeps_fresh_certs_and_force_renews_with_the_nodes_own_identity(node_env, tmp_path):
    path, _, creds, env, out = node_env
    pki = out / "worker-1" / "pki"
    before = _serial(pki / "kubelet-client.crt")
    hook_log = tmp_path / "hook.log"
    hook = f"{sys.executable} -c \"import os; open('{hook_log}', 'a').write(os.environ['VAULTK8S_RENEWED'] + chr(10))\""
    kept = cli(env, "agent", "-c", str(path), "--node", "worker-1", "--out", str(out), "--credentials", str(creds),
               "--once", "--exec", hook)
    assert kept.returncode == 0, kept.stderr
    assert "0 renewed" in kept.stdout and not hook_log.exists()
    renewed = cli(env, "agent", "-c", str(path), "--node", "worker-1", "--out", str(out), "--credentials", str(creds),
                  "--once", "--force", "--exec", hook, "--exec", hook)
    assert renewed.returncode == 0, renewed.stderr
    assert _serial(pki / "kubelet-client.crt") != before
    assert openssl_verify(pki / "ca.crt", pki / "kubelet-client.crt").returncode == 0
    lines = hook_log.read_text().splitlines()
    assert len(lines) == 1  # the same hook twice runs once per batch
    renewed_files = set(lines[0].split())
    assert {"pki/kubelet-client.crt", "pki/kubelet.key", "pki/kube-proxy.crt"} <= renewed_files
    assert "kubelet.conf" not in renewed_files  # it references the files; client-go reloads them
    assert "secret_id" not in renewed.stderr + renewed.stdout


def test_control_plane_agent_renews_its_components_but_not_people_identities(node_env, vault_env, tmp_path):
    path, _, _, env, out = node_env
    creds = tmp_path / "creds-cp-1"
    assert cli(vault_env, "node", "credentials", "-c", str(path), "--node", "cp-1", "--out", str(creds)).returncode == 0
    pki = out / "cp-1" / "pki"
    admin, apiserver = _serial(pki / "admin.crt"), _serial(pki / "apiserver.crt")
    proc = cli(env, "agent", "-c", str(path), "--node", "cp-1", "--out", str(out), "--credentials", str(creds),
               "--once", "--force")
    assert proc.returncode == 0, proc.stderr
    assert _serial(pki / "apiserver.crt") != apiserver and _serial(pki / "etcd" / "peer.crt")
    assert _serial(pki / "admin.crt") == admin  # for people: bootstrap (the operator) renews it


def test_a_worker_credential_cannot_renew_another_node(node_env):
    """worker-1's enrolment secret_id in worker-2's place (worker-2's own certificate not on disk)."""
    path, _, creds, env, out = node_env
    (out / "worker-2" / "pki" / "kubelet-client.key").unlink()
    proc = cli(env, "agent", "-c", str(path), "--node", "worker-2", "--out", str(out), "--credentials", str(creds),
               "--once", "--force")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "403" in proc.stderr and "kubelet" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_loop_renews_on_schedule(node_env):
    """A fake clock: the wait moves time forward, so a day of rounds takes seconds."""
    _, config, creds, env, out = node_env
    pki = out / "worker-1" / "pki"
    files = ("kubelet-client.crt", "kubelet.crt", "kube-proxy.crt")
    first = {f: _serial(pki / f) for f in files}
    issued = crypto.load_certs((pki / "kubelet.crt").read_bytes())[0].not_valid_before_utc
    # Started 7h after issue: the certificates are no longer young (a quarter of their life), so
    # the usual schedule applies, not the first-renewal spread of a fleet started with fresh ones.
    clock = {"now": issued + timedelta(hours=7)}
    waits, first_renewal = [], []
    settings = AgentSettings(config=config, node="worker-1", output=node_output(out, "worker-1"),
                             credentials_dir=creds, idle=timedelta(hours=6))
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(env), clock=lambda: clock["now"])

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if not first_renewal and any(_serial(pki / f) != first[f] for f in files):
            first_renewal.append(clock["now"])
        clock["now"] += timedelta(seconds=seconds + 1)
        # Vault stamps new certificates with the real time, so stop once each was renewed once.
        if all(_serial(pki / f) != first[f] for f in files) or clock["now"] > issued + timedelta(hours=17):
            agent.stop()

    agent.run(wait=wait)
    assert agent.failures == 0
    assert waits[0] == 6 * 3600  # renewal is 8h+ away: sleep the idle bound, not until then
    assert all(w >= 30 for w in waits)  # never a hot loop
    # 24h certificates are renewed between 14h48m (2/3 minus the largest jitter, 1/20) and 16h of life.
    assert all(_serial(pki / f) != first[f] for f in files)
    assert timedelta(hours=14, minutes=48) <= first_renewal[0] - issued <= timedelta(hours=16, minutes=1)
    assert agent.metrics.renewed.labels("worker-1")._value.get() >= 3


def test_backoff_when_vault_is_unreachable(node_env):
    _, config, creds, env, out = node_env
    settings = AgentSettings(config=config, node="worker-1", output=node_output(out, "worker-1"), credentials_dir=creds)
    broken = dict(env, VAULT_ADDR="https://127.0.0.1:1")
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(broken))
    waits = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            agent.stop()

    agent.run(wait=wait)
    assert agent.failures == 3
    assert all(5 <= w <= 600 for w in waits)


def test_after_vault_goes_down_a_holding_agent_waits_a_share_of_the_life_left(node_env):
    """Certificates held (24h, fresh): retries wait 1/8 to 1/2 of the ~24h left, so an outage's
    backlog does not come back all at once."""
    _, config, creds, env, out = node_env
    settings = AgentSettings(config=config, node="worker-1", output=node_output(out, "worker-1"), credentials_dir=creds)
    target = {"env": env}
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(target["env"]))
    waits = []

    def wait(seconds: float) -> None:
        waits.append(seconds)
        target["env"] = dict(env, VAULT_ADDR="https://127.0.0.1:1")  # Vault gone after the first round
        if len(waits) == 2:
            agent.stop()

    agent.run(wait=wait)
    assert agent.failures == 1
    assert 23 * 3600 / 8 <= waits[1] <= 24 * 3600 / 2


def test_sighup_renews_now_and_sigterm_stops(node_env):
    """The sidecar as operators run it: a long-lived process, signals, metrics on loopback."""
    path, _, creds, env, out = node_env
    pki = out / "worker-1" / "pki"
    before = _serial(pki / "kubelet.crt")
    from tests.helpers.ports import find_free_port
    port = find_free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))} | env
    proc = subprocess.Popen([sys.executable, "-m", "vaultk8s", "agent", "-c", str(path), "--node", "worker-1",
                             "--out", str(out), "--credentials", str(creds), "--metrics-port", str(port)],
                            env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = _wait_for_metrics(port, 'vaultk8s_agent_rounds_total{node="worker-1",result="success"} 1.0')
        assert 'vaultk8s_certificate_expiry_timestamp_seconds{file="kubelet.crt",node="worker-1"}' in metrics
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while _serial(pki / "kubelet.crt") == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _serial(pki / "kubelet.crt") != before
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "renewed pki/kubelet.crt (forced renewal)" in err
    assert "secret" not in err.lower().replace("secret_id", "")


def _wait_for_metrics(port: int, sample: str) -> str:
    import requests

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            if sample in text:
                return text
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("agent metrics never came up")


def test_credential_files_are_0600(node_env):
    _, _, creds, _, _ = node_env
    for name in ("role_id", "secret_id"):
        assert (creds / name).stat().st_mode & 0o777 == 0o600
