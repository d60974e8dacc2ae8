"""CertificateSigningRequests for the signer tests: post them with kubectl as a given identity, wait
for their outcome, run `vaultk8s signer` as a process (stopped by pid, bounded waits)."""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import requests
import yaml

from vaultk8s import crypto
from vaultk8s.plan.csr_review import CLIENT_SIGNER, SERVING_SIGNER

from tests.helpers.cluster import REPO
from tests.helpers.kube import KubeControlPlane, stop_process
from tests.helpers.ports import find_free_port

CLIENT_USAGES = ["digital signature", "key encipherment", "client auth"]  # what a 1.24 kubelet sends
SERVING_USAGES = ["digital signature", "key encipherment", "server auth"]
WAIT_SECONDS = 60.0


def make_request(cn: str, org: str | None = "system:nodes", dns=(), ips=(), key_type: str = "ec-p256"):
    """(private key, CSR PEM)."""
    key = crypto.generate_key(key_type)
    return key, crypto.build_csr(key, cn, org, tuple(dns), tuple(ipaddress.ip_address(i) for i in ips))


def post_csr(plane: KubeControlPlane, pem: str, *, serving: bool = False, usages: list[str] | None = None,
             kubeconfig: Path | None = None, token: str | None = None, expiration_seconds: int | None = None,
             name: str | None = None) -> str:
    """Create a CSR as the identity of kubeconfig (or a bearer token); returns its name."""
    name = name or f"csr-{uuid.uuid4().hex[:8]}"
    spec = {"request": base64.b64encode(pem.encode()).decode(), "signerName": SERVING_SIGNER if serving else CLIENT_SIGNER,
            "usages": usages or (SERVING_USAGES if serving else CLIENT_USAGES)}
    if expiration_seconds:
        spec["expirationSeconds"] = expiration_seconds
    doc = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
           "spec": spec}
    args = ["create", "-f", "-"] + ([f"--token={token}"] if token else [])
    if token:  # a bearer token alone: no client certificate from admin.conf
        args += [f"--server={plane.url}", f"--certificate-authority={plane.pki / 'ca.crt'}"]
        kubeconfig = plane.workdir / "empty.conf"
        kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    plane.kubectl(*args, kubeconfig=kubeconfig, input=yaml.safe_dump(doc))
    return name


def get_csr(plane: KubeControlPlane, name: str) -> dict:
    return json.loads(plane.kubectl("get", "csr", name, "-o", "json").stdout)


def conditions(csr: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (csr.get("status") or {}).get("conditions") or []}


def wait_csr(plane: KubeControlPlane, name: str, *, until: str = "issued", timeout: float = WAIT_SECONDS) -> dict:
    """Poll (bounded) until the CSR has a certificate ("issued") or the condition `until`."""
    deadline, csr = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        csr = get_csr(plane, name)
        if until == "issued" and (csr.get("status") or {}).get("certificate"):
            return csr
        if until != "issued" and until in conditions(csr):
            return csr
        time.sleep(0.5)
    raise AssertionError(f"CSR {name} did not reach {until} within {timeout}s: {json.dumps(csr.get('status'))}")


def metric_total(port: int, line_prefix: str) -> float:
    """The sum of the /metrics samples whose line starts with line_prefix (0 while the process starts)."""
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    except requests.ConnectionError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(line_prefix))


def issued_pem(csr: dict) -> bytes:
    return base64.b64decode(csr["status"]["certificate"])


class SignerProcess:
    """`python -m vaultk8s signer` in the background, logging to a file."""

    def __init__(self, workdir: Path, env: dict[str, str], *args: str):
        self.log = workdir / f"signer-{uuid.uuid4().hex[:6]}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "vaultk8s", "signer", *args], env={**base, **env},
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        return stop_process(self.proc, timeout)

    def __enter__(self) -> "SignerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class TcpProxy:
    """A loopback TCP forwarder to target_port that can be switched off (connection refused) and on:
    Vault "down" without touching the shared OpenBao."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = find_free_port(1)
        self._listener = None
        self._conns: list = []

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
            upstream.settimeout(None)
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for sock in self._conns:
            try:
                sock.close()
            except OSError:
                pass
        self._conns.clear()
