"""A real Kubernetes control plane for tests: etcd + kube-apiserver (+ kube-controller-manager) from
the binaries in VAULTK8S_KUBE_BIN, running on a tree that `vaultk8s bootstrap` wrote.

Everything listens on 127.0.0.1 and is stopped by pid with bounded waits. A test that needs it
skips with a reason when VAULTK8S_KUBE_BIN is unset; CI sets it (.ci/run), so CI runs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.ports import find_free_port
from tests.helpers.cluster import run_cli, write_cluster
from tests.helpers.redacted import RedactedEnv

KUBE_BIN_ENV = "VAULTK8S_KUBE_BIN"
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 10.0


def kube_bin_dir() -> Path:
    """The folder of kube-apiserver, kube-controller-manager and kubeadm, or skip the test."""
    value = os.environ.get(KUBE_BIN_ENV)
    if not value:
        pytest.skip(f"{KUBE_BIN_ENV} is not set (point it at ../shared/k8s/bin to run real Kubernetes tests)")
    folder = Path(value)
    missing = [b for b in ("kube-apiserver", "kube-controller-manager", "kubeadm") if not (folder / b).is_file()]
    if missing:
        pytest.skip(f"{KUBE_BIN_ENV}={value} lacks {', '.join(missing)}")
    if not (shutil.which("etcd") and shutil.which("kubectl")):
        pytest.skip("etcd (etcd-server) or kubectl is not installed")
    return folder


def loopback_port() -> int:
    return find_free_port(1)


def kube_cluster_doc(prefix: str, apiserver_port: int, workers: int = 1, key_type: str = "ec-p256",
                     leaf_ttl: str = "24h", **sections: Any) -> dict[str, Any]:
    """A cluster file whose one control plane is 127.0.0.1, reachable at its own endpoint.

    Workers get 127.0.1.N (all of 127/8 is loopback), so their IPs are real local addresses too.
    """
    doc: dict[str, Any] = {
        "cluster": {"name": "kube", "endpoint": f"https://127.0.0.1:{apiserver_port}",
                    "service_cidr": "10.96.0.0/12", "domain": "cluster.local", "apiserver_port": apiserver_port},
        "pki": {"key_type": key_type, "leaf_ttl": leaf_ttl, "ca_ttl": "87600h"},
        "vault": {"mount_prefix": prefix},
        "nodes": {
            "control_plane": [{"name": "cp-1", "ips": ["127.0.0.1"], "sans": ["localhost"]}],
            "workers": [{"name": f"worker-{i + 1}", "ips": [f"127.0.1.{i + 1}"]} for i in range(workers)],
        },
    }
    doc.update(sections)
    return doc


def stop_process(proc: subprocess.Popen | None, timeout: float = STOP_TIMEOUT) -> int | None:
    """SIGTERM, a bounded wait, then SIGKILL; the exit code (None when there was no process)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return proc.returncode


class KubeControlPlane:
    """etcd + kube-apiserver of one control-plane node directory (`<out>/<node>`), kubeadm's flags."""

    def __init__(self, out_dir: Path, workdir: Path, apiserver_port: int, node: str = "cp-1") -> None:
        self.out, self.workdir, self.port, self.node = out_dir, workdir, apiserver_port, node
        self.bin = kube_bin_dir()
        self.node_dir = out_dir / node
        self.pki = self.node_dir / "pki"
        self.etcd_ports = (loopback_port(), loopback_port())
        self.cluster_file: Path | None = None
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None
        self.controller_managers: list[subprocess.Popen] = []
        self.extra_apiserver_args: tuple[str, ...] = ()
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.node_dir / "admin.conf"

    @property
    def super_admin_kubeconfig(self) -> Path:
        return self.node_dir / "super-admin.conf"

    def log(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with open(self.log(name), "ab") as log:  # the child keeps its own descriptor
            return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    # etcd ---------------------------------------------------------------------------------------
    def start_etcd(self) -> None:
        client, peer = (f"https://127.0.0.1:{p}" for p in self.etcd_ports)
        p = self.pki / "etcd"
        self.etcd = self._spawn("etcd", [
            shutil.which("etcd") or "etcd", f"--name={self.node}", f"--data-dir={self.workdir / 'etcd-data'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.node}={peer}", "--initial-cluster-state=new",
            f"--cert-file={p / 'server.crt'}", f"--key-file={p / 'server.key'}",
            "--client-cert-auth", f"--trusted-ca-file={p / 'ca.crt'}",
            f"--peer-cert-file={p / 'peer.crt'}", f"--peer-key-file={p / 'peer.key'}",
            "--peer-client-cert-auth", f"--peer-trusted-ca-file={p / 'ca.crt'}",
        ])

    # kube-apiserver -----------------------------------------------------------------------------
    def apiserver_args(self) -> list[str]:
        p = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            "--advertise-address=127.0.0.1", "--bind-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--etcd-servers=https://127.0.0.1:{self.etcd_ports[0]}",
            f"--etcd-cafile={p / 'etcd/ca.crt'}", f"--etcd-certfile={p / 'apiserver-etcd-client.crt'}",
            f"--etcd-keyfile={p / 'apiserver-etcd-client.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
            f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
            f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group", "--requestheader-username-headers=X-Remote-User",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--authorization-mode=Node,RBAC", "--enable-bootstrap-token-auth=true",
            "--enable-admission-plugins=NodeRestriction", "--allow-privileged=true",
            *self.extra_apiserver_args,
        ]

    def start(self, extra_apiserver_args: tuple[str, ...] | list[str] = ()) -> None:
        """etcd, then kube-apiserver; returns once /readyz answers through admin.conf."""
        self.extra_apiserver_args = tuple(extra_apiserver_args)
        self.start_etcd()
        self.start_apiserver()

    def start_apiserver(self) -> None:
        self.apiserver = self._spawn("kube-apiserver", self.apiserver_args())
        self.wait_ready()

    def restart_apiserver(self) -> None:
        stop_process(self.apiserver)
        self.start_apiserver()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self.etcd), ("kube-apiserver", self.apiserver)):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode}: {self._tail(name)}")
            result = self.kubectl("get", "--raw=/readyz", kubeconfig=self.super_admin_kubeconfig, check=False,
                                  timeout=15)
            if result.returncode == 0 and result.stdout.strip() == "ok":
                return
            last = (result.stderr or result.stdout).strip()[-300:]
            time.sleep(0.5)
        raise AssertionError(f"kube-apiserver not ready within {timeout}s: {last}; {self._tail('kube-apiserver')}")

    def _tail(self, name: str, chars: int = 1500) -> str:
        path = self.log(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    # kube-controller-manager --------------------------------------------------------------------
    def start_controller_manager(self, extra_args: tuple[str, ...] | list[str] = ()) -> subprocess.Popen:
        """kube-controller-manager from controller-manager.conf, external-CA mode (no csrsigning)."""
        return self.spawn_controller_manager(self.node_dir / "controller-manager.conf",
                                             ["--controllers=*,-csrsigning", "--leader-elect=false", *extra_args])

    def spawn_controller_manager(self, conf: Path, flags: list[str]) -> subprocess.Popen:
        """kube-controller-manager on conf with the flags every test shares, then `flags` (controllers,
        signing files, leader election, extras)."""
        p, index = self.pki, len(self.controller_managers)
        proc = self._spawn(f"kube-controller-manager-{index}", [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={conf}", f"--authentication-kubeconfig={conf}", f"--authorization-kubeconfig={conf}",
            "--bind-address=127.0.0.1", f"--secure-port={loopback_port()}",
            f"--cert-dir={self.workdir / f'kcm-certs-{index}'}",
            f"--client-ca-file={p / 'ca.crt'}", f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
            f"--root-ca-file={p / 'ca.crt'}", f"--service-account-private-key-file={p / 'sa.key'}",
            "--use-service-account-credentials=true", "--cluster-name=kube", *flags,
        ])
        self.controller_managers.append(proc)
        return proc

    # clients ------------------------------------------------------------------------------------
    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 60,
                input: str | None = None) -> subprocess.CompletedProcess:
        """kubectl against this API server; admin.conf unless told otherwise."""
        cmd = ["kubectl", f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", "--request-timeout=20s", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                env={**os.environ, "HOME": str(self.workdir)})
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}: {result.stderr[-1500:]}")
        return result

    def stop(self) -> None:
        for proc in [*self.controller_managers, self.apiserver, self.etcd]:
            stop_process(proc)


@contextlib.contextmanager
def running_control_plane(tmp_path: Path, vault_env: dict[str, str], mount_prefix: str,
                          free_port: Callable[[], int] | None = None, workers: int = 1,
                          bootstrap_env: dict[str, str] | None = None,
                          extra_apiserver_args: tuple[str, ...] = (), **doc_kw: Any) -> Iterator[KubeControlPlane]:
    """Bootstrap a cluster whose cp-1 is 127.0.0.1, start etcd + kube-apiserver on it, apply rbac.yaml.

    `free_port` is the conftest fixture of that name (any callable returning a free port) or None.
    """
    kube_bin_dir()  # skip before any work when the binaries are absent
    port = (free_port or loopback_port)()
    cluster_file = write_cluster(tmp_path / "cluster.yaml", kube_cluster_doc(mount_prefix, port, workers, **doc_kw))
    out = tmp_path / "out"
    run_cli("bootstrap", "--config", str(cluster_file), "--out", str(out),
            env=RedactedEnv({**vault_env, **(bootstrap_env or {})}), check=True)
    plane = KubeControlPlane(out, tmp_path / f"kube-{uuid.uuid4().hex[:6]}", port)
    plane.cluster_file = cluster_file
    try:
        plane.start(extra_apiserver_args)
        plane.kubectl("apply", "-f", str(out / "rbac.yaml"), kubeconfig=plane.super_admin_kubeconfig)
        yield plane
    finally:
        plane.stop()


def token_kubeconfig(plane: KubeControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig (0600) that authenticates to plane with a bearer token (a ServiceAccount's)."""
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": {"server": plane.url, "certificate-authority": str(plane.pki / "ca.crt")}}],
           "users": [{"name": "u", "user": {"token": str(token)}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def load_kubeconfig(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# kubeadm on a vaultk8s tree ----------------------------------------------------------------------
# kubeadm reads /etc/kubernetes only. In a private mount namespace, /etc gets a throw-away overlay
# (upper layer on a tmpfs) and the node directory is bound onto /etc/kubernetes: the host's /etc is
# never written, and the namespace ends with the command.
_KUBEADM_NS = """set -eu
tree=$1; scratch=$2; shift 2
mount --make-rprivate /
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$scratch/upper,workdir=$scratch/work" /etc
mkdir -p /etc/kubernetes
mount --bind "$tree" /etc/kubernetes
exec "$@"
"""


def kubeadm_config(cluster: dict[str, Any], node: str = "cp-1") -> str:
    """kubeadm's InitConfiguration + ClusterConfiguration for a cluster file's document."""
    cp = next(n for n in cluster["nodes"]["control_plane"] if n["name"] == node)
    port = cluster["cluster"].get("apiserver_port", 6443)
    endpoint = cluster["cluster"]["endpoint"].removeprefix("https://")
    docs = [
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "InitConfiguration",
         "localAPIEndpoint": {"advertiseAddress": cp["ips"][0], "bindPort": port},
         "nodeRegistration": {"name": node}},
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration",
         "clusterName": cluster["cluster"]["name"], "kubernetesVersion": "v1.24.0",
         "controlPlaneEndpoint": endpoint, "certificatesDir": "/etc/kubernetes/pki"},
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def kubeadm(node_dir: Path, scratch: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real kubeadm with node_dir as its /etc/kubernetes (needs root for `unshare -m`)."""
    binary = kube_bin_dir() / "kubeadm"
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("kubeadm reads /etc/kubernetes only: a private mount namespace needs root and unshare")
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "-m", "sh", "-c", _KUBEADM_NS, "kubeadm-ns", str(node_dir), str(scratch),
                           str(binary), *args], capture_output=True, text=True, timeout=timeout)
