"""A node's identity against a real OpenBao: enrol once with the AppRole secret_id, then log in with
the node's own kubelet-client certificate (Vault's cert auth); revoke; re-admit (docs/identity.md)."""

from __future__ import annotations

import shutil
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes

from tests.helpers.ports import find_free_port
from tests.helpers.agent import get, start_agent, stop_agent, wait_for
from tests.helpers.hsm import hsm_section, needs_softhsm, new_token
from tests.helpers.policy import CLUSTER, applied_cluster, approle_login, call, can_sign, cli, write_cluster
from vaultk8s import crypto
from vaultk8s.agent.runner import Agent, AgentSettings
from vaultk8s.errors import CredentialError, VaultError
from vaultk8s.ops.renew import node_output
from vaultk8s.plan import naming
from vaultk8s.store.atomic import public
from vaultk8s.store.layout import NodeOutput
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

NODE = "worker-1"


def _serial(path: Path) -> int:
    return crypto.load_certs(path.read_bytes())[0].serial_number


def _enrol(vault_env, tmp_path, mount_prefix, **overrides):
    """policy apply, bootstrap (operator), worker-1 as a fresh node: credentials, no kubelet-client yet.

    Returns (cluster file, config, operator token, credentials dir, env without a token, out dir)."""
    path, config, operator = applied_cluster(vault_env, tmp_path, mount_prefix, **overrides)
    out = tmp_path / "out"
    pki = out / NODE / "pki"
    NodeOutput(out, NODE).update_pki({"kubelet-client.crt": None, "kubelet-client.key": None})
    assert not (pki / "kubelet-client.crt").exists()
    creds = tmp_path / "creds"
    made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", NODE, "--out", str(creds), token=operator)
    assert made.returncode == 0, made.stderr
    env = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    return path, config, operator, creds, env, out


def _agent_once(env, path, out, creds, *extra):
    return cli(env, "agent", "-c", str(path), "--node", NODE, "--out", str(out), "--credentials", str(creds),
               "--once", *extra)


def _cert_login(env, config, node_dir: Path, entry_node: str) -> str:
    """A certificate login as the agent makes it (hvac, TLS client certificate): the token."""
    gateway = VaultGateway.from_env(env)
    pki = node_dir / "pki"
    return gateway.login_cert(naming.cert_mount(config), naming.cert_entry(entry_node),
                              str(pki / "kubelet-client.crt"), str(pki / "kubelet-client.key"))


def _cert_login_refused(env, config, node_dir: Path, entry_node: str) -> bool:
    try:
        _cert_login(env, config, node_dir, entry_node)
    except VaultError:
        return True
    return False


def test_default_enrolment_is_24h_and_used_once(vault_env, tmp_path, mount_prefix):
    """The defaults a user gets: secret_id_ttl 24h; the first round enrols, the secret_id is then
    destroyed in Vault and deleted; a copy of the directory taken before is useless."""
    path, config, _, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    role = call(vault_env, vault_env["VAULT_TOKEN"], "GET",
                f"auth/{naming.approle_mount(config)}/role/{naming.approle_role(NODE)}").json()["data"]
    assert role["secret_id_ttl"] == 24 * 3600
    lookup = call(vault_env, vault_env["VAULT_TOKEN"], "POST",
                  f"auth/{naming.approle_mount(config)}/role/{naming.approle_role(NODE)}/secret-id/lookup",
                  {"secret_id": (creds / "secret_id").read_text()}).json()["data"]
    assert lookup["secret_id_ttl"] == 24 * 3600
    yesterday = tmp_path / "copy"
    shutil.copytree(creds, yesterday)

    first = _agent_once(env, path, out, creds)
    assert first.returncode == 0, first.stderr
    assert "enrolled" in first.stderr and "secret_id is destroyed" in first.stderr
    assert not (creds / "secret_id").exists() and (creds / "role_id").exists()
    assert sorted(p.name for p in creds.iterdir()) == ["approle_mount", "role_id"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in creds.iterdir())
    assert approle_login(vault_env, config, yesterday).status_code in (400, 403)  # destroyed in Vault

    again = _agent_once(env, path, out, creds, "--force")  # the certificate now, no secret at all
    assert again.returncode == 0, again.stderr
    assert "secret_id" not in again.stderr
    token = _cert_login(env, config, out / NODE, NODE)
    assert can_sign(vault_env, config, token, NODE) and not can_sign(vault_env, config, token, "worker-2")


def test_wrapped_enrolment_and_node_a_cannot_log_in_as_node_b(vault_env, tmp_path, mount_prefix):
    path, config, operator, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    (creds / "secret_id").unlink()
    wrapped = cli(vault_env, "node", "credentials", "-c", str(path), "--node", NODE, "--out", str(creds),
                  "--wrap-ttl", "5m", token=operator)
    assert wrapped.returncode == 0, wrapped.stderr
    first = _agent_once(env, path, out, creds)
    assert first.returncode == 0, first.stderr
    assert not (creds / "secret_id").exists() and not (creds / "secret_id.wrapped").exists()
    # worker-1's certificate (CN system:node:worker-1) against worker-2's entry, and the reverse
    assert _cert_login_refused(env, config, out / NODE, "worker-2")
    assert _cert_login_refused(env, config, out / "worker-2", NODE)
    # kube-proxy's certificate is signed by the same CA, but its CN names no node
    pki = out / NODE / "pki"
    gateway = VaultGateway.from_env(env)
    with pytest.raises(VaultError):
        gateway.login_cert(naming.cert_mount(config), naming.cert_entry(NODE), str(pki / "kube-proxy.crt"),
                           str(pki / "kube-proxy.key"))


def test_day_31_agent_keeps_renewing_after_the_enrolment_ttl(vault_env, tmp_path, mount_prefix):
    """The regression: enrolment secret_id lives 60 s; the agent, left alone, still renews after
    that, twice, logging in with its certificate (on the old AppRole-only agent every round after
    60 s fails with `invalid role or secret ID`)."""
    path, config, _, creds, env, out = _enrol(
        vault_env, tmp_path, mount_prefix, pki={"leaf_ttl": "10m"},
        policy={"bind_cidrs": False, "secret_id_ttl": "60s", "token_ttl": "1m", "token_max_ttl": "2m"})
    enrolled_at = time.monotonic()
    yesterday = tmp_path / "copy"
    shutil.copytree(creds, yesterday)
    pki = out / NODE / "pki"
    port = find_free_port()
    proc = start_agent(env, "-c", str(path), "--node", NODE, "--out", str(out), "--credentials", str(creds),
                       "--idle", "10s", "--metrics-port", str(port), log=tmp_path / "agent.log")
    try:
        wait_for("the first round", lambda: (pki / "kubelet-client.crt").exists())
        time.sleep(max(0.0, 65 - (time.monotonic() - enrolled_at)))  # the enrolment secret_id has expired
        assert approle_login(vault_env, config, yesterday).status_code in (400, 403)
        rounds_before = _metric(port, f'vaultk8s_agent_rounds_total{{node="{NODE}",result="success"}}')
        serials = [_serial(pki / "kubelet-client.crt")]
        for _ in range(2):
            proc.send_signal(signal.SIGHUP)  # renew now, like a due renewal, minutes early
            serials.append(wait_for("a renewal", lambda: (s := _serial(pki / "kubelet-client.crt")) != serials[-1] and s,
                                    timeout=60))
        wait_for("an idle round", lambda: _metric(port, f'vaultk8s_agent_rounds_total{{node="{NODE}",'
                                                        'result="success"}') >= rounds_before + 3, timeout=40)
        metrics = get(port, "/metrics").text
        assert time.monotonic() - enrolled_at > 60
        assert _metric(port, f'vaultk8s_agent_rounds_total{{node="{NODE}",result="failure"}}') == 0
        assert f'vaultk8s_agent_failing_since_timestamp_seconds{{node="{NODE}"}} 0.0' in metrics
        last_cert = _metric(port, f'vaultk8s_agent_last_login_timestamp_seconds{{method="cert",node="{NODE}"}}')
        assert time.time() - last_cert < 30
        assert f'vaultk8s_agent_leaf_ttl_seconds{{node="{NODE}"}} 600.0' in metrics
        cert_expiry = _metric(port, f'vaultk8s_credential_expiry_timestamp_seconds{{credential="certificate",'
                                    f'node="{NODE}"}}')
        assert 0 < cert_expiry - time.time() <= 600
        assert 'credential="enrolment"' not in metrics  # no longer held
        assert get(port, "/healthz").status_code == 200
    finally:
        code = stop_agent(proc)
    log = (tmp_path / "agent.log").read_text()
    assert code == 0, log
    assert "error" not in log.lower().replace("errors", ""), log
    assert len(set(serials)) == 3
    assert not (creds / "secret_id").exists()


def _metric(port: int, sample: str) -> float:
    for line in get(port, "/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_revoke_blocks_certificate_login_through_policy_apply_until_readmitted(vault_env, tmp_path, mount_prefix):
    path, config, operator, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    assert _agent_once(env, path, out, creds).returncode == 0
    node_dir = out / NODE
    old_token = _cert_login(env, config, node_dir, NODE)

    revoked = cli(vault_env, "node", "revoke", "-c", str(path), "--node", NODE, "--output", "json", token=operator)
    assert revoked.returncode == 0, revoked.stderr
    assert '"cert_entry_deleted": true' in revoked.stdout and '"entity_deleted": true' in revoked.stdout
    assert _cert_login_refused(env, config, node_dir, NODE)
    assert not can_sign(vault_env, config, old_token, NODE)

    refused = _agent_once(env, path, out, creds, "--force")
    assert refused.returncode == 9 and "Traceback" not in refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert "Vault refused its certificate login" in last
    assert f"`vaultk8s node credentials --node {NODE} --out {creds}`" in last

    applied = cli(vault_env, "policy", "apply", "-c", str(path))  # an unrelated re-run
    assert applied.returncode == 0, applied.stderr
    assert f"node {NODE} was revoked" in applied.stdout + applied.stderr
    assert _cert_login_refused(env, config, node_dir, NODE)
    again = cli(vault_env, "node", "credentials", "-c", str(path), "--node", NODE, "--out", str(creds), token=operator)
    assert again.returncode != 0 and f"--readmit {NODE}" in again.stderr
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    assert _cert_login_refused(env, config, node_dir, NODE)
    other = _cert_login(env, config, out / "worker-2", "worker-2")  # other nodes unaffected
    assert can_sign(vault_env, config, other, "worker-2")

    readmitted = cli(vault_env, "policy", "apply", "-c", str(path), "--readmit", NODE)
    assert readmitted.returncode == 0, readmitted.stderr
    # the documented caveat: a certificate issued before the revoke logs in again after readmission
    fresh = _cert_login(env, config, node_dir, NODE)
    assert can_sign(vault_env, config, fresh, NODE)
    assert not can_sign(vault_env, config, old_token, NODE)  # tokens from before stay dead
    assert not cli(vault_env, "policy", "diff", "-c", str(path), "--output", "json").stdout.count('"kind"')


def test_offline_node_with_an_expired_certificate_gets_one_line_to_re_enrol(vault_env, tmp_path, mount_prefix):
    path, config, _, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    assert _agent_once(env, path, out, creds).returncode == 0
    pki = out / NODE / "pki"
    # Back after its certificate expired: an agent whose clock is past the leaf's end.
    not_after = crypto.load_certs((pki / "kubelet-client.crt").read_bytes())[0].not_valid_after_utc
    clock = {"now": not_after + timedelta(hours=1)}
    settings = AgentSettings(config=config, node=NODE, output=node_output(out, NODE), credentials_dir=creds)
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(env), clock=lambda: clock["now"])
    with pytest.raises(CredentialError) as err:
        agent.renew_once()
    message = str(err.value)
    assert message.startswith(f"node {NODE}: its certificate expired at ")
    assert f"run `vaultk8s node credentials --node {NODE} --out {creds}` to enrol it again" in message
    assert "\n" not in message
    waits = []
    agent.run(wait=lambda s: (waits.append(s), agent.stop()))
    assert agent.failures == 1
    since = agent.metrics.failing_since.labels(NODE)._value.get()
    assert since == clock["now"].timestamp()
    # The same through the CLI: a certificate on disk that ended an hour ago (what an offline node has)
    key = crypto.generate_key("ec-p256")
    name = crypto.load_certs((pki / "kubelet-client.crt").read_bytes())[0].subject
    now = datetime.now(timezone.utc)
    expired = crypto.certificate_builder(name, name, key.public_key(), now - timedelta(days=2),
                                         now - timedelta(hours=1)).sign(key, hashes.SHA256())
    NodeOutput(out, NODE).update_pki({"kubelet-client.crt": public(crypto.cert_pem(expired))})
    proc = _agent_once(env, path, out, creds)
    assert proc.returncode == 9 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: node {NODE}: its certificate expired at ")
    assert "vaultk8s node credentials --node worker-1" in lines[-1]


def test_rejected_login_is_counted(vault_env, tmp_path, mount_prefix):
    path, config, operator, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    assert _agent_once(env, path, out, creds).returncode == 0
    assert cli(vault_env, "node", "revoke", "-c", str(path), "--node", NODE, token=operator).returncode == 0
    settings = AgentSettings(config=config, node=NODE, output=node_output(out, NODE), credentials_dir=creds)
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(env))
    agent.run(wait=lambda s: agent.stop())
    assert agent.failures == 1
    assert agent.metrics.login_failures.labels(NODE, "cert", "rejected")._value.get() == 1


def test_certificate_login_survives_a_kubernetes_ca_rotation(vault_env, tmp_path, mount_prefix):
    """stage -> switch -> retire of kubernetes-ca with the operator token: after each phase the
    agent renews, logging in with a leaf of whichever root signed it."""
    path, config, operator, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    assert _agent_once(env, path, out, creds).returncode == 0
    pki = out / NODE / "pki"
    for phase in ("stage", "switch", "retire"):
        rotated = cli(vault_env, "ca", "rotate", "-c", str(path), "-o", str(out), "--ca", "kubernetes-ca",
                      "--phase", phase, token=operator)
        assert rotated.returncode == 0, (phase, rotated.stderr)
        before = _serial(pki / "kubelet-client.crt")
        renewed = _agent_once(env, path, out, creds, "--force")
        assert renewed.returncode == 0, (phase, renewed.stderr)
        assert _serial(pki / "kubelet-client.crt") != before
        _cert_login(env, config, out / NODE, NODE)
        _cert_login(env, config, out / "worker-2", "worker-2")  # bootstrap's leaves, not the agent's
    entry = call(vault_env, vault_env["VAULT_TOKEN"], "GET",
                 f"auth/{naming.cert_mount(config)}/certs/{naming.cert_entry(NODE)}").json()["data"]
    assert crypto.same_certificates(entry["certificate"], (pki / "ca.crt").read_bytes())


def test_policy_apply_is_idempotent_shows_drift_and_prunes_cert_entries(vault_env, tmp_path, mount_prefix):
    path, config, _ = applied_cluster(vault_env, tmp_path, mount_prefix)
    again = cli(vault_env, "policy", "apply", "-c", str(path), "--output", "json")
    assert again.returncode == 0 and '"changed": false' in again.stdout, again.stdout
    entry = f"auth/{naming.cert_mount(config)}/certs/{naming.cert_entry(NODE)}"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "POST", entry, {"token_ttl": "2h"}).ok
    drift = cli(vault_env, "policy", "diff", "-c", str(path))
    assert "write-cert-entry" in drift.stdout and "token_ttl" in drift.stdout, drift.stdout
    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    fixed = call(vault_env, vault_env["VAULT_TOKEN"], "GET", entry).json()["data"]
    assert fixed["token_ttl"] == 3600 and fixed["allowed_common_names"] == [f"system:node:{NODE}"]
    # worker-2 leaves the cluster file: its certificate login goes with its AppRole role
    nodes = {**CLUSTER["nodes"], "workers": [w for w in CLUSTER["nodes"]["workers"] if w["name"] != "worker-2"]}
    (tmp_path / "shrunk").mkdir()
    shrunk_path, _ = write_cluster(tmp_path / "shrunk", mount_prefix, nodes=nodes)
    pruned = cli(vault_env, "policy", "apply", "-c", str(shrunk_path))
    assert pruned.returncode == 0, pruned.stderr
    assert "delete-cert-entry" in pruned.stdout
    gone = call(vault_env, vault_env["VAULT_TOKEN"], "GET",
                f"auth/{naming.cert_mount(config)}/certs/{naming.cert_entry('worker-2')}")
    assert gone.status_code == 404


@needs_softhsm
def test_hsm_mode_certificate_login_chains_through_the_intermediate(vault_env, tmp_path, mount_prefix, monkeypatch):
    """HSM mode: leaves are signed by the mount's intermediate; the entry trusts root + intermediate."""
    new_token(tmp_path / "hsm", monkeypatch)
    path, config, _, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix, hsm=hsm_section("ec-p384"))
    first = _agent_once(env, path, out, creds)
    assert first.returncode == 0, first.stderr
    assert not (creds / "secret_id").exists()
    token = _cert_login(env, config, out / NODE, NODE)
    assert can_sign(vault_env, config, token, NODE)


def test_bound_cidrs_hold_for_the_certificate_login(vault_env, tmp_path, mount_prefix):
    """bind_cidrs (the default): worker-1's certificate logs in only from worker-1's IP, not from here."""
    path, config, _ = applied_cluster(vault_env, tmp_path, mount_prefix, policy={"bind_cidrs": True})
    entry = call(vault_env, vault_env["VAULT_TOKEN"], "GET",
                 f"auth/{naming.cert_mount(config)}/certs/{naming.cert_entry(NODE)}").json()["data"]
    assert entry["token_bound_cidrs"] == ["10.0.1.1"]
    env = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    assert _cert_login_refused(env, config, tmp_path / "out" / NODE, NODE)


def test_default_policy_binds_the_certificate_login_to_the_nodes_own_ip(vault_env, tmp_path, mount_prefix):
    """With the shipped policy defaults (no policy: section), a node whose IP is the one Vault sees
    (127.0.0.1 here) logs in with its certificate, and the token it gets is bound to that IP."""
    nodes = {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}],
             "workers": [{"name": NODE, "ips": ["127.0.0.1"]}, {"name": "worker-2", "ips": ["10.0.1.2"]}]}
    path, config, _ = applied_cluster(vault_env, tmp_path, mount_prefix, policy={}, nodes=nodes)
    assert config.policy.bind_cidrs
    env = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    token = _cert_login(env, config, tmp_path / "out" / NODE, NODE)
    looked_up = call(vault_env, token, "GET", "auth/token/lookup-self").json()["data"]
    assert looked_up["bound_cidrs"] == ["127.0.0.1"]
    assert can_sign(vault_env, config, token, NODE)
    assert _cert_login_refused(env, config, tmp_path / "out" / "worker-2", "worker-2")


def test_secret_id_is_kept_until_the_certificate_login_works(vault_env, tmp_path, mount_prefix, caplog):
    """No cert entry yet (say, an older `policy apply`): the round succeeds with the enrolment
    secret_id, which is kept (and its expiry exported) until the certificate logs in."""
    path, config, _, creds, env, out = _enrol(vault_env, tmp_path, mount_prefix)
    entry = f"auth/{naming.cert_mount(config)}/certs/{naming.cert_entry(NODE)}"
    assert call(vault_env, vault_env["VAULT_TOKEN"], "DELETE", entry).ok
    settings = AgentSettings(config=config, node=NODE, output=node_output(out, NODE), credentials_dir=creds)
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(env))
    agent.renew_once()
    assert (creds / "secret_id").exists()
    assert "enrolment secret_id kept" in caplog.text
    expiry = agent.metrics.credential_expiry.labels(NODE, "enrolment")._value.get()
    assert abs(expiry - (time.time() + 24 * 3600)) < 120
    assert agent.metrics.last_login.labels(NODE, "approle")._value.get() > 0

    assert cli(vault_env, "policy", "apply", "-c", str(path)).returncode == 0
    agent.renew_once()
    assert not (creds / "secret_id").exists()
    assert agent.metrics.last_login.labels(NODE, "cert")._value.get() > 0
    assert 'credential="enrolment"' not in _exposition(agent)


def _exposition(agent: Agent) -> str:
    from prometheus_client import generate_latest

    return generate_latest(agent.metrics.registry).decode()
