"""A three-member etcd cluster on the issued etcd/server and etcd/peer certificates, with client-cert
auth: the etcd-ca clients are let in, clients of the other two CAs are refused."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.nodes import run_cli, write_cluster

pytestmark = pytest.mark.integration

ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
MEMBERS = [("cp-1", "127.0.0.11"), ("cp-2", "127.0.0.12"), ("cp-3", "127.0.0.13")]  # all of 127/8 is loopback


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def etcd_cluster(openbao, tmp_path_factory):
    """One cluster for the module: starting three members is the slow part."""
    if not (ETCD and ETCDCTL):
        pytest.skip("etcd-server / etcd-client not installed")
    tmp_path = tmp_path_factory.mktemp("etcd")
    vault_env = openbao.as_environ()
    cluster = write_cluster(tmp_path, f"e{uuid.uuid4().hex[:8]}/", MEMBERS)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    ports = {name: (_free_port(ip), _free_port(ip)) for name, ip in MEMBERS}
    initial = ",".join(f"{n}=https://{ip}:{ports[n][1]}" for n, ip in MEMBERS)
    procs = []
    try:
        for name, ip in MEMBERS:
            procs.append(_start_member(tmp_path, out / name / "pki", name, ip, ports[name], initial))
        endpoints = [f"https://{ip}:{ports[n][0]}" for n, ip in MEMBERS]
        _wait_healthy(out / "cp-1" / "pki", endpoints, procs)
        yield out / "cp-1" / "pki", endpoints, tmp_path / "etcd-cp-1.log"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _start_member(tmp_path: Path, pki: Path, name: str, ip: str, ports: tuple[int, int], initial: str):
    client, peer = f"https://{ip}:{ports[0]}", f"https://{ip}:{ports[1]}"
    args = [
        ETCD, f"--name={name}", f"--data-dir={tmp_path / ('etcd-' + name)}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={initial}", "--initial-cluster-state=new", "--initial-cluster-token=vaultk8s-it",
        f"--cert-file={pki / 'etcd/server.crt'}", f"--key-file={pki / 'etcd/server.key'}",
        "--client-cert-auth", f"--trusted-ca-file={pki / 'etcd/ca.crt'}",
        f"--peer-cert-file={pki / 'etcd/peer.crt'}", f"--peer-key-file={pki / 'etcd/peer.key'}",
        "--peer-client-cert-auth", f"--peer-trusted-ca-file={pki / 'etcd/ca.crt'}",
    ]
    log = open(tmp_path / f"etcd-{name}.log", "wb")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def _etcdctl(pki: Path, endpoints: list[str], cert: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    cmd = [ETCDCTL, f"--endpoints={','.join(endpoints)}", f"--cacert={pki / 'etcd/ca.crt'}",
           f"--cert={pki / (cert + '.crt')}", f"--key={pki / (cert + '.key')}",
           "--dial-timeout=2s", "--command-timeout=4s", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)


def _wait_healthy(pki: Path, endpoints: list[str], procs, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"an etcd member exited with {dead[0].returncode}; see etcd-*.log in the test dir")
        if _etcdctl(pki, endpoints, "apiserver-etcd-client", "endpoint", "health").returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"etcd cluster not healthy within {timeout}s")


@pytest.mark.parametrize("client", ["apiserver-etcd-client", "etcd/healthcheck-client"])
def test_etcd_ca_clients_are_accepted(etcd_cluster, client):
    pki, endpoints, _ = etcd_cluster
    health = _etcdctl(pki, endpoints, client, "endpoint", "health")
    assert health.returncode == 0, health.stderr
    assert health.stderr.count("is healthy") + health.stdout.count("is healthy") == 3
    members = _etcdctl(pki, endpoints, client, "member", "list")
    assert members.returncode == 0 and {"cp-1", "cp-2", "cp-3"} <= set(members.stdout.replace(",", " ").split())


@pytest.mark.parametrize("client", ["admin", "front-proxy-client"])  # kubernetes-ca, front-proxy-ca
def test_other_cas_are_refused(etcd_cluster, client):
    pki, endpoints, log = etcd_cluster
    result = _etcdctl(pki, endpoints[:1], client, "endpoint", "health")
    assert result.returncode != 0
    assert "is healthy" not in result.stdout + result.stderr
    assert "unhealthy" in result.stdout + result.stderr
    put = _etcdctl(pki, endpoints[:1], client, "put", "k", "v")
    assert put.returncode != 0
    # Refused by the TLS client-certificate check, not by a timeout or a wrong address.
    assert "failed to verify client certificate: x509: certificate signed by unknown authority" in log.read_text()
