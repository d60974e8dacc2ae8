"""etcd-ca rotation under load: a three-member etcd cluster on vaultk8s certificates serves a
continuous write/read loop through stage, switch and retire, with a rolling restart (one member at
a time, quorum kept) after stage and after retire, since etcd 3.4 reads --trusted-ca-file only at
start. The loop client uses the cluster's three endpoints and reads its files on each request.
Not one of its requests may fail; afterwards a client certificate of the old CA must be refused.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers.etcd import ETCD, ETCDCTL, MEMBERS, etcdctl, free_port, start_member, wait_healthy
from tests.helpers.nodes import run_cli, write_cluster
from vaultk8s import crypto

pytestmark = pytest.mark.integration

CLIENT = "apiserver-etcd-client"
LOOP_LIMIT_SECONDS = 300  # the loop stops by itself even if the test body hangs
TLS_FAILURE = re.compile(r"x509|certificate|tls:|handshake", re.I)
TRANSPORT_HICCUP = re.compile(r"DeadlineExceeded|deadline exceeded|Unavailable|missing content-type|"
                              r"connection refused|transport is closing|"
                              r"server closed the stream without sending trailers", re.I)  # a member stopped mid-call


class LoopClient(threading.Thread):
    """put k=i then get k, over and over, counting successes and failures per phase."""

    def __init__(self, pki: Path, endpoints: list[str]):
        super().__init__(daemon=True)
        self.pki, self.endpoints = pki, endpoints
        self.phase = "start"
        self.ok: dict[str, int] = {}
        self.failures: list[str] = []
        self.retried = 0
        self._halt = threading.Event()

    def run(self) -> None:
        deadline, i = time.monotonic() + LOOP_LIMIT_SECONDS, 0
        while not self._halt.is_set() and time.monotonic() < deadline:
            key, value = f"loop/{i % 20}", str(i)
            put = self._call("put", key, value)
            get = self._call("get", key, "--print-value-only")
            for what, result, good in (("put", put, put.returncode == 0),
                                       ("get", get, get.returncode == 0 and get.stdout.strip() == value)):
                if good:
                    self.ok[self.phase] = self.ok.get(self.phase, 0) + 1
                else:
                    self.failures.append(f"{self.phase} {what} {key}: {(result.stderr or result.stdout).strip()[:300]}")
            i += 1

    def _call(self, *args: str) -> subprocess.CompletedProcess:
        """One etcdctl call; a transport hiccup (a member restarting, a deadline on a loaded machine)
        is retried once. A TLS refusal is never retried: that is what this test is about."""
        result = etcdctl(self.pki, self.endpoints, CLIENT, *args)
        text = result.stderr + result.stdout
        if result.returncode != 0 and not TLS_FAILURE.search(text) and TRANSPORT_HICCUP.search(text):
            self.retried += 1
            result = etcdctl(self.pki, self.endpoints, CLIENT, *args)
        return result

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


class Cluster:
    def __init__(self, tmp_path: Path, out: Path):
        self.tmp_path, self.out = tmp_path, out
        self.ports = {name: (free_port(ip), free_port(ip)) for name, ip in MEMBERS}
        self.initial = ",".join(f"{n}=https://{ip}:{self.ports[n][1]}" for n, ip in MEMBERS)
        self.endpoints = {n: f"https://{ip}:{self.ports[n][0]}" for n, ip in MEMBERS}
        self.procs = {}

    def start(self, name: str) -> None:
        ip = dict(MEMBERS)[name]
        self.procs[name] = start_member(self.tmp_path, self.out / name / "pki", name, ip, self.ports[name], self.initial)

    def leader(self) -> str:
        status = etcdctl(self.pki, list(self.endpoints.values()), CLIENT, "endpoint", "status", "-w", "json")
        rows = json.loads(status.stdout)
        by_id = {row["Status"]["header"]["member_id"]: row["Endpoint"] for row in rows}
        leader_endpoint = by_id[rows[0]["Status"]["leader"]]
        return next(n for n, e in self.endpoints.items() if e == leader_endpoint)

    def rolling_restart(self) -> None:
        """Followers first, the leader last (SIGTERM makes it hand leadership over), each one
        healthy again before the next goes down."""
        leader = self.leader()
        for name in [n for n, _ in MEMBERS if n != leader] + [leader]:
            proc = self.procs[name]
            proc.terminate()
            proc.wait(timeout=30)
            self.start(name)
            wait_healthy(self.pki, [self.endpoints[name]], list(self.procs.values()), timeout=30)

    @property
    def pki(self) -> Path:
        return self.out / "cp-1" / "pki"

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
        for proc in self.procs.values():
            proc.wait(timeout=10)


def _handshake_trusting(anchor: Path, pki: Path, endpoint: str) -> None:
    """A TLS handshake by a client that trusts only `anchor` (like kube-apiserver, which reads
    --etcd-cafile once): the server's presented chain must lead to it."""
    context = ssl.create_default_context(cafile=str(anchor))
    context.load_cert_chain(str(pki / f"{CLIENT}.crt"), str(pki / f"{CLIENT}.key"))
    host, port = urlsplit(endpoint).hostname, urlsplit(endpoint).port
    with socket.create_connection((host, port), timeout=5) as sock:
        with context.wrap_socket(sock, server_hostname=host):
            pass


def _rotate(cluster_file: Path, out: Path, env, phase: str) -> None:
    run_cli(["ca", "rotate", "-c", str(cluster_file), "-o", str(out), "--ca", "etcd-ca", "--phase", phase], env)


@pytest.mark.skipif(not (ETCD and ETCDCTL), reason="etcd-server / etcd-client not installed")
def test_etcd_ca_rotation_under_load(openbao, tmp_path):
    env = openbao.as_environ()
    cluster_file = write_cluster(tmp_path, f"r{uuid.uuid4().hex[:8]}/", MEMBERS)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster_file), "-o", str(out)], env)
    cluster = Cluster(tmp_path, out)
    old_root = tmp_path / "old-root.pem"
    shutil.copyfile(cluster.pki / "etcd/ca.crt", old_root)
    old_client = tmp_path / "old-client"
    (old_client / "etcd").mkdir(parents=True)
    for suffix in (".crt", ".key"):
        shutil.copyfile(cluster.pki / f"{CLIENT}{suffix}", old_client / f"{CLIENT}{suffix}")
    loop = None
    try:
        for name, _ in MEMBERS:
            cluster.start(name)
        wait_healthy(cluster.pki, list(cluster.endpoints.values()), list(cluster.procs.values()))
        loop = LoopClient(cluster.pki, list(cluster.endpoints.values()))
        loop.start()
        time.sleep(2)

        loop.phase = "stage"
        _rotate(cluster_file, out, env, "stage")
        assert all(len(crypto.load_certs((out / n / "pki/etcd/ca.crt").read_bytes())) == 2 for n, _ in MEMBERS)
        cluster.rolling_restart()

        loop.phase = "switch"
        _rotate(cluster_file, out, env, "switch")
        time.sleep(2)  # members pick up the new serving certificate on each new connection
        for endpoint in cluster.endpoints.values():
            _handshake_trusting(old_root, cluster.pki, endpoint)
        shutil.copyfile(cluster.pki / "etcd/ca.crt", old_client / "etcd/ca.crt")
        still = etcdctl(old_client, list(cluster.endpoints.values()), CLIENT, "put", "old", "client")
        assert still.returncode == 0, "an old-CA client is refused before retire: " + still.stderr

        loop.phase = "retire"
        _rotate(cluster_file, out, env, "retire")
        assert all(len(crypto.load_certs((out / n / "pki/etcd/ca.crt").read_bytes())) == 1 for n, _ in MEMBERS)
        cluster.rolling_restart()
        for endpoint in cluster.endpoints.values():  # leaf + cross-signed cert still lead to the old root
            _handshake_trusting(old_root, cluster.pki, endpoint)
        loop.phase = "after"
        time.sleep(2)
        loop.stop()

        shutil.copyfile(cluster.pki / "etcd/ca.crt", old_client / "etcd/ca.crt")
        refused = etcdctl(old_client, list(cluster.endpoints.values())[:1], CLIENT, "put", "old", "client",
                          command_timeout="2s")
        assert refused.returncode != 0
        logs = "".join((tmp_path / f"etcd-{n}.log").read_text() for n, _ in MEMBERS)
        assert "failed to verify client certificate: x509: certificate signed by unknown authority" in logs
    finally:
        if loop is not None:
            loop.stop()
        cluster.stop()
    print(f"\netcd-ca rotation loop: ok per phase {loop.ok}, failures {len(loop.failures)}, "
          f"transport retries {loop.retried}")
    assert loop.failures == [], loop.failures[:5]
    assert all(loop.ok.get(p, 0) > 0 for p in ("stage", "switch", "retire", "after")), loop.ok
