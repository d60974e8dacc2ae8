"""A real etcd cluster on vaultk8s-issued certificates: start members, etcdctl, health waits."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.helpers.ports import find_free_port

ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
MEMBERS = [("cp-1", "127.0.0.11"), ("cp-2", "127.0.0.12"), ("cp-3", "127.0.0.13")]  # all of 127/8 is loopback


def free_port(host: str) -> int:
    return find_free_port(1, host)


def start_member(tmp_path: Path, pki: Path, name: str, ip: str, ports: tuple[int, int], initial: str):
    """One member with client and peer mTLS from its node's pki/; an existing data dir is rejoined."""
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
    with open(tmp_path / f"etcd-{name}.log", "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)


def etcdctl(pki: Path, endpoints: list[str], cert: str, *args: str,
            command_timeout: str = "4s") -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCDCTL_API="3")
    cmd = [ETCDCTL, f"--endpoints={','.join(endpoints)}", f"--cacert={pki / 'etcd/ca.crt'}",
           f"--cert={pki / (cert + '.crt')}", f"--key={pki / (cert + '.key')}",
           "--dial-timeout=2s", f"--command-timeout={command_timeout}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)


def wait_healthy(pki: Path, endpoints: list[str], procs, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise AssertionError(f"an etcd member exited with {dead[0].returncode}; see etcd-*.log in the test dir")
        if etcdctl(pki, endpoints, "apiserver-etcd-client", "endpoint", "health").returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"etcd cluster not healthy within {timeout}s")
