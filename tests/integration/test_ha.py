"""vaultk8s against a real 3-node OpenBao raft cluster (`vaultk8s dev up --nodes 3`) under failover.

Faults are real: the active node's process is SIGKILLed, or `bao operator step-down` is run. Each
run either completes or fails with one clear line, and a re-run converges with nothing lost or
duplicated (tests/helpers/converge.py says what that means).
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.helpers import converge
from tests.helpers.cluster import cluster_doc, run_cli, write_cluster
from tests.helpers.ha import assert_one_clear_line, reaped, start_cli
from tests.helpers.policy import applied_cluster, cli
from vaultk8s.agent.runner import Agent, AgentSettings
from vaultk8s.config import load_config
from vaultk8s.errors import PlanRefused
from vaultk8s.ops.renew import node_output
from vaultk8s.plan.naming import entity_name
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

KILL_WORKERS = 1000  # the size; the kill waits for the signing phase, so it is mid-run


def test_dev_up_three_nodes_prints_the_usual_exports_and_ha_status_lists_all(openbao_ha):
    assert set(openbao_ha.exports) == {"VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT"}
    assert openbao_ha.exports["VAULT_ADDR"] == f"https://127.0.0.1:{openbao_ha.port}"
    assert openbao_ha.token not in openbao_ha.up_stderr
    ha = openbao_ha.get("sys/ha-status", openbao_ha.exports["VAULT_ADDR"])["nodes"]
    assert sorted(n["api_address"] for n in ha) == [f"https://127.0.0.1:{openbao_ha.port + 2 * k}" for k in range(3)]
    assert sum(bool(n["active_node"]) for n in ha) == 1
    servers = openbao_ha.get("sys/storage/raft/configuration")["data"]["config"]["servers"]
    assert len(servers) == 3 and all(s["voter"] for s in servers)

    status = run_cli("dev", "status", "--state-dir", str(openbao_ha.state))
    assert status.returncode == 0, status.stderr
    assert len([line for line in status.stdout.splitlines() if line.startswith("node ")]) == 3
    env = run_cli("dev", "env", "--state-dir", str(openbao_ha.state))
    assert env.stdout == "".join(f"export {k}={v}\n" for k, v in openbao_ha.exports.items())
    again = run_cli("dev", "up", "--state-dir", str(openbao_ha.state), "--nodes", "1")
    assert again.returncode != 0 and "has 3 node(s)" in again.stderr and again.stdout == ""


def test_status_lists_the_certificate_every_node_serves(openbao_ha, tmp_path, mount_prefix):
    env = openbao_ha.env_for(openbao_ha.standby())
    path, _, _ = applied_cluster(env, tmp_path, mount_prefix)
    done = cli(env, "status", "-c", str(path), "--output", "json")
    assert done.returncode == 0, done.stderr
    served = sorted(i["name"] for i in json.loads(done.stdout)["items"] if i["kind"] == "vault-tls")
    assert served == sorted(f"https://127.0.0.1:{openbao_ha.port + 2 * k} serving certificate" for k in range(3))


def test_bootstrap_pointed_at_a_standby(openbao_ha, tmp_path, mount_prefix):
    path = write_cluster(tmp_path / "cluster.yaml", cluster_doc(mount_prefix, workers=3))
    env = openbao_ha.env_for(openbao_ha.standby())
    converge.assert_converged(path, tmp_path / "out", env)


def test_active_node_killed_in_the_middle_of_a_big_bootstrap(openbao_ha, tmp_path, mount_prefix):
    """The client points at the node that dies: it moves to a peer learned from sys/ha-status."""
    path = write_cluster(tmp_path / "cluster.yaml", cluster_doc(mount_prefix, workers=KILL_WORKERS))
    active = openbao_ha.active()
    env = openbao_ha.env_for(active)
    out = tmp_path / "out"
    with reaped(start_cli("bootstrap", "-c", str(path), "-o", str(out), env=env)) as proc:
        mount = load_config(path).mount("kubernetes-ca")
        _wait_until(lambda: proc.poll() is not None or _cert_count(openbao_ha, mount) >= 300, "300 certs signed")
        assert proc.poll() is None, f"bootstrap ended before the kill: {proc.stderr.read()[-2000:]}"
        openbao_ha.kill(active)
        _, stderr = proc.communicate(timeout=900)
    assert_one_clear_line(proc.returncode, stderr)
    survivor = openbao_ha.env_for(openbao_ha.active())
    sa_doc = converge.VaultView(survivor).sa_state(path)[0]
    openbao_ha.heal()
    converge.assert_converged(path, out, survivor, sa_doc=sa_doc)


def test_active_node_killed_in_the_middle_of_an_agent_round(openbao_ha, tmp_path, mount_prefix):
    """In process, so the kill lands exactly between two of the round's signing requests."""
    admin = openbao_ha.env_for(openbao_ha.standby())
    path, config, _ = applied_cluster(admin, tmp_path, mount_prefix)
    creds = tmp_path / "creds-cp-1"
    made = cli(admin, "node", "credentials", "-c", str(path), "--node", "cp-1", "--out", str(creds))
    assert made.returncode == 0, made.stderr
    before = converge.VaultView(admin).sa_state(path)[0]
    active, standby = openbao_ha.active(), openbao_ha.standby()
    no_token = {k: v for k, v in openbao_ha.env_for(standby).items() if k != "VAULT_TOKEN"}
    killed = threading.Event()

    class KillsTheActiveMidRound(VaultGateway):
        def sign(self, *args, **kwargs):
            if not killed.is_set():
                killed.set()
                openbao_ha.kill(active)  # after the login and the first reads, before the first sign
            return super().sign(*args, **kwargs)

    def connect() -> VaultGateway:
        return KillsTheActiveMidRound.from_env(no_token)

    out = tmp_path / "out"
    settings = AgentSettings(config=config, node="cp-1", output=node_output(out, "cp-1"), credentials_dir=creds)
    result = Agent(settings, connect).renew_once(force=True)
    assert killed.is_set() and result.renewed, "the round did not renew through the failover"
    openbao_ha.heal()
    again = Agent(settings, lambda: VaultGateway.from_env(no_token)).renew_once()
    assert not again.renewed
    assert converge.assert_pairs_match(out, path) > 0
    check = run_cli("certs", "check", "--out", str(out), env=admin)
    assert check.returncode == 0, check.stdout[-2000:]
    assert converge.VaultView(admin).sa_state(path)[0] == before


def test_step_down_during_policy_apply(openbao_ha, tmp_path, mount_prefix):
    doc = cluster_doc(mount_prefix, workers=150)
    doc["policy"] = {"bind_cidrs": False}  # only this test's subject is the failover, not CIDR drift
    path = write_cluster(tmp_path / "cluster.yaml", doc)
    env = openbao_ha.env_for(openbao_ha.standby())
    view = converge.VaultView(env)
    with reaped(start_cli("policy", "apply", "-c", str(path), env=env)) as proc:
        _wait_until(lambda: proc.poll() is not None or len(_entities(view)) >= 20, "20 entities written")
        assert proc.poll() is None, f"policy apply ended before the step-down: {proc.stderr.read()[-2000:]}"
        stepped = openbao_ha.step_down()
        assert stepped.returncode == 0, stepped.stderr
        _, stderr = proc.communicate(timeout=600)
    assert_one_clear_line(proc.returncode, stderr)
    rerun = cli(env, "policy", "apply", "-c", str(path))
    assert rerun.returncode == 0, rerun.stderr
    noop = cli(env, "policy", "apply", "-c", str(path), "--output", "json")
    assert noop.returncode == 0 and '"changed": false' in noop.stdout, noop.stdout[-2000:]
    config = load_config(path)
    mine = {entity_name(config, node.name) for node in config.nodes}
    assert mine <= set(_entities(view))
    for name in sorted(mine):
        aliases = view.get(f"identity/entity/name/{name}")["data"]["aliases"]
        # the AppRole role_id, the token role's alias and the certificate login's CN: none twice
        assert len(aliases) == 3, f"{name}: {len(aliases)} aliases"


def _entities(view: converge.VaultView) -> list[str]:
    return (view.get("identity/entity/name", "LIST").get("data") or {}).get("keys") or []


def _cert_count(cluster, mount: str) -> int:
    try:
        return len((cluster.get(f"{mount}/certs", method="LIST").get("data") or {}).get("keys") or [])
    except Exception:  # a node between elections: just look again
        return 0


def _wait_until(check, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not reached within {timeout:.0f}s: {what}"
        time.sleep(0.2)



def test_sa_key_write_is_never_replayed_blindly(openbao_ha, mount_prefix):
    """Check-and-set through a standby: a write over a version that moved on is refused, even with
    the same data (only after a lost answer does a re-read accept our own landed write)."""
    gateway = VaultGateway.from_env(openbao_ha.env_for(openbao_ha.standby()))
    mount = f"{mount_prefix}kv"
    gateway.enable_kv2(mount, "test")
    ours = {"keys": "ours"}
    assert gateway.kv2_write(mount, "sa", ours, cas=0) == 1
    for racing in (ours, {"keys": "someone else's"}):
        with pytest.raises(PlanRefused, match="changed in Vault while this command ran"):
            gateway.kv2_write(mount, "sa", racing, cas=0)
    assert gateway.kv2_read(mount, "sa") == (ours, 1)


def test_an_auth_mount_probe_through_a_standby_answers_at_once(openbao_ha, mount_prefix):
    """"Is anything mounted here?" (bootstrap asks it of the cert and JWT logins every run): a missing
    mount is answered by the first 404, not waited out as a standby's lag (3 s each before); a
    mount just enabled is seen as mounted."""
    gateway = VaultGateway.from_env(openbao_ha.env_for(openbao_ha.standby()))
    calls = []
    gateway.client.adapter.session.hooks["response"].append(lambda response, *a, **kw: calls.append(response.url))
    assert gateway.read_auth_config(f"auth/{mount_prefix}nothing/certs/x") == (False, None)
    assert len(calls) == 1, calls
    mount = f"{mount_prefix}probe-cert"
    gateway.enable_auth("cert", mount, "test")
    assert gateway.read_auth_config(f"auth/{mount}/certs/x", just_enabled=True)[0] is True


def test_policy_apply_through_a_standby_configures_the_jwt_mount_it_enables(openbao_ha, tmp_path, mount_prefix):
    """policy apply enables the JWT mount and at once writes its keys: that read waits out a
    standby not yet knowing the new mount instead of taking it for "no JWT login here"."""
    doc = cluster_doc(mount_prefix, workers=1)
    doc["policy"] = {"bind_cidrs": False}
    path = write_cluster(tmp_path / "cluster.yaml", doc)
    env = openbao_ha.env_for(openbao_ha.standby())
    boot = run_cli("bootstrap", "-c", str(path), "-o", str(tmp_path / "out"), env=env)  # makes the SA key set
    assert boot.returncode == 0, boot.stderr
    applied = cli(env, "policy", "apply", "-c", str(path))
    assert applied.returncode == 0, applied.stderr
    jwt = converge.VaultView(env).get(f"auth/{mount_prefix}jwt/config")["data"]
    sa_pub = (tmp_path / "out" / "cp-1" / "pki" / "sa.pub").read_text().strip()
    assert [k.strip() for k in jwt["jwt_validation_pubkeys"]] == [sa_pub]
