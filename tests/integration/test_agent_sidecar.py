"""The agent as a sidecar / system service, against a real OpenBao: /healthz, /readyz, /metrics on
--metrics-addr, a reload by pid file, and sd_notify to a real unix datagram socket."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers.ports import find_free_port
from tests.helpers.agent import get, node_env, start_agent, stop_agent, wait_for  # noqa: F401 (fixture)
from tests.helpers.nodes import tree_state
from tests.helpers.policy import cli
from vaultk8s import crypto
from vaultk8s.agent.runner import Agent, AgentSettings
from vaultk8s.ops.renew import node_output
from vaultk8s.serve import HealthServer
from vaultk8s.store.layout import NodeOutput
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

CONSUMER = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: open(sys.argv[1], 'a').write('reloaded\\n'))
print('up', flush=True)
time.sleep(300)
"""


def _serial(path: Path) -> int:
    return crypto.load_certs(path.read_bytes())[0].serial_number


@pytest.fixture
def consumer(tmp_path):
    """A stand-in for etcd/kubelet: a process that appends a line to `reloads` on SIGUSR1."""
    marker = tmp_path / "reloads"
    proc = subprocess.Popen([sys.executable, "-c", CONSUMER, str(marker)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "up\n"
    yield proc, marker
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(60)
    yield sock, str(path)
    sock.close()


def _answer(port: int, path: str) -> tuple[int, str]:
    resp = get(port, path)  # a Response is falsy when it is a 503, so wait_for gets a tuple
    return resp.status_code, resp.text


def _agent_args(path, creds, out, *extra):
    return ("-c", str(path), "--node", "worker-1", "--out", str(out), "--credentials", str(creds), *extra)


def test_sidecar_health_ready_notify_and_reload_by_pid_file(node_env, consumer, notify_socket, tmp_path):
    path, _, creds, env, out = node_env
    proc_consumer, reloads = consumer
    sock, sock_path = notify_socket
    pid_file = tmp_path / "consumer.pid"
    pid_file.write_text(f"{proc_consumer.pid}\n")
    pki = out / "worker-1" / "pki"
    before = _serial(pki / "kubelet.crt")
    port = find_free_port()
    agent = start_agent(env | {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "2000000"},
                        *_agent_args(path, creds, out, "--metrics-addr", f"127.0.0.1:{port}",
                                     "--reload-signal", "USR1", "--pid-file", str(pid_file)),
                        log=tmp_path / "agent.log")
    try:
        assert sock.recv(4096) == b"READY=1\nSTATUS=certificates of worker-1 in place"
        assert sock.recv(4096) == b"WATCHDOG=1"  # every WatchdogSec/2 while healthy
        assert (get(port, "/readyz").status_code, get(port, "/readyz").text) == (200, "ok\n")
        assert (get(port, "/healthz").status_code, get(port, "/healthz").text) == (200, "ok\n")
        assert 'vaultk8s_agent_rounds_total{node="worker-1",result="success"} 1.0' in get(port, "/metrics").text
        assert not reloads.exists()  # fresh certificates: nothing written, nobody signalled
        agent.send_signal(signal.SIGHUP)
        wait_for("the consumer's reload", reloads.exists)
        assert reloads.read_text() == "reloaded\n"  # once per batch, not once per file
        assert _serial(pki / "kubelet.crt") != before
        assert get(port, "/healthz").status_code == 200
    finally:
        code = stop_agent(agent)
    assert code == 0, (tmp_path / "agent.log").read_text()
    while (msg := sock.recv(4096)) == b"WATCHDOG=1":
        pass
    assert msg == b"STOPPING=1"


def test_missing_pid_file_fails_the_round_and_the_reload_is_retried(node_env, tmp_path):
    """Not a crash: logged, the agent stays up, and the pending reload runs once the pid file is there."""
    path, _, creds, env, out = node_env
    pid_file = tmp_path / "run" / "consumer.pid"
    port = find_free_port()
    log = tmp_path / "agent.log"
    agent = start_agent(env, *_agent_args(path, creds, out, "--metrics-port", str(port), "--pid-file", str(pid_file)),
                        log=log)
    try:
        wait_for("readiness", lambda: get(port, "/readyz").status_code == 200)
        agent.send_signal(signal.SIGHUP)  # renews everything; the reload cannot find its process
        wait_for("the logged reload failure", lambda: f"reload: pid file {pid_file} is missing" in log.read_text())
        assert agent.poll() is None and get(port, "/healthz").status_code == 200
        marker = tmp_path / "reloads"
        consumer = subprocess.Popen([sys.executable, "-c", CONSUMER.replace("SIGUSR1", "SIGHUP"), str(marker)],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert consumer.stdout.readline() == "up\n"
            pid_file.parent.mkdir()
            pid_file.write_text(str(consumer.pid))
            wait_for("the retried reload (after backoff)", marker.exists, timeout=120)
        finally:
            consumer.kill()
            consumer.wait(timeout=10)
    finally:
        code = stop_agent(agent)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "secret" not in text.lower().replace("secret_id", "")


def test_healthz_names_a_missing_certificate_while_vault_is_down(node_env, tmp_path):
    path, _, creds, env, out = node_env
    NodeOutput(out, "worker-1").update_pki({"kubelet.crt": None})
    port = find_free_port()
    agent = start_agent(env | {"VAULT_ADDR": "https://127.0.0.1:1"},
                        *_agent_args(path, creds, out, "--metrics-addr", f"127.0.0.1:{port}"), log=tmp_path / "a.log")
    try:
        health = wait_for("/healthz", lambda: _answer(port, "/healthz"))
        assert health == (503, "pki/kubelet.crt missing\n")
        status, text = wait_for("a failed round", lambda: (a := _answer(port, "/readyz"))[1].count(":") and a)
        assert status == 503
        assert text.startswith("no successful renewal round yet: ") and text.count("\n") == 1
    finally:
        assert stop_agent(agent) == 0


def test_healthz_fails_in_the_last_tenth_of_life(node_env):
    """A fake clock on real certificates: 95% through their life, /healthz is 503 and says which and why."""
    _, config, creds, env, out = node_env
    pki = out / "worker-1" / "pki"
    cert = crypto.load_certs((pki / "kubelet.crt").read_bytes())[0]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    clock = {"now": cert.not_valid_before_utc + life * 0.5}
    settings = AgentSettings(config=config, node="worker-1", output=node_output(out, "worker-1"), credentials_dir=creds)
    agent = Agent(settings, connect=lambda: VaultGateway.from_env(env), clock=lambda: clock["now"])
    server = HealthServer("127.0.0.1", 0, agent.metrics.registry, liveness=agent.health,
                          readiness=agent.readiness).start()
    try:
        assert get(server.port, "/healthz").status_code == 200
        clock["now"] = cert.not_valid_before_utc + life * 0.95
        resp = get(server.port, "/healthz")
        assert resp.status_code == 503
        assert "in the last tenth of its life (expires " in resp.text and "more)" in resp.text
        clock["now"] = cert.not_valid_after_utc + timedelta(seconds=1)
        assert "expired at" in get(server.port, "/healthz").text
    finally:
        server.stop()


@pytest.mark.parametrize("flags, says", [
    (("--metrics-addr", "127.0.0.1:99999"), "--metrics-addr: port '99999' is not in 1-65535"),
    (("--metrics-addr", "nohost"), "expected HOST:PORT"),
    (("--metrics-port", "0"), "--metrics-port: port 0 is not in 1-65535"),
    (("--metrics-port", "9469", "--metrics-addr", "127.0.0.1:9469"), "not both"),
    (("--reload-signal", "HUPP", "--pid-file", "/run/x.pid"), "'HUPP' is not a signal name"),
    (("--reload-signal", "HUP"), "--reload-signal needs --pid-file"),
])
def test_bad_flags_are_one_line_and_write_nothing(node_env, flags, says):
    path, _, creds, env, out = node_env
    before = tree_state(out)
    proc = cli(env, "agent", *_agent_args(path, creds, out, "--once", "--force", *flags))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and says in proc.stderr and "Traceback" not in proc.stderr
    assert tree_state(out) == before


def test_port_in_use_is_one_line_before_any_renewal(node_env):
    path, _, creds, env, out = node_env
    before = tree_state(out)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = cli(env, "agent", *_agent_args(path, creds, out, "--once", "--force", "--metrics-addr",
                                              f"127.0.0.1:{port}"))
    assert proc.returncode == 2
    assert proc.stderr == f"error: command line: cannot listen on 127.0.0.1:{port}: address already in use " \
                          "(another agent or exporter on that port?)\n"
    assert tree_state(out) == before
