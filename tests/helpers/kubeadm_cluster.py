"""A real kubeadm cluster for the adoption tests (issue 18): kubeadm's own tree, run with kubeadm's flags.

- `make_kubeadm_tree(workdir, port)` runs the real kubeadm v1.24 (`init phase certs all`, then
  `init phase kubeconfig all`) and returns `<workdir>/<node>`, kubeadm's /etc/kubernetes layout:
  plain files, RSA-2048, the three CA keys and sa.key on disk. These two phases need no mount
  namespace and no root: certificatesDir and --kubeconfig-dir point them at the work folder, and
  nothing outside it is written (measured, docs/adopt-facts.md). 1.24 writes no super-admin.conf;
  its admin.conf is `O=system:masters`.
- `KubeadmControlPlane(tree, workdir, port)`: etcd + kube-apiserver (+ kube-controller-manager with
  csrsigning, as kubeadm runs it) on that tree, composed from tests/helpers/kube.py's
  KubeControlPlane (its flags are kubeadm's static-pod flags; `kubeadm_manifest_commands` reads
  kubeadm's own manifests to check that). Loopback only, stopped by pid with bounded waits.
- `RequestLoop`: a thread that sends one request every `interval` and records every failure with
  its error text; `HttpsProbe` (a fresh TLS connection per request, the served certificate's
  fingerprint recorded), `KubectlProbe` (kubectl as a subprocess).
- `mint_token`: a ServiceAccount token through the TokenRequest API (no controller-manager is
  needed, but then no `default` ServiceAccount exists: one is created).

kubeadm's controller-manager.conf and scheduler.conf name the advertise address (made up, never
reachable here: kubeadm refuses a loopback one), so the controller-manager runs from a copy of
controller-manager.conf whose server is 127.0.0.1, re-made from the tree's file at every start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.helpers.kube import KubeControlPlane, kube_bin_dir, kubeadm, loopback_port, stop_process

KUBERNETES_VERSION = "v1.24.0"
# RFC 5737 TEST-NET-1: never routed, so nothing can ever answer on it. kubeadm refuses a loopback
# advertiseAddress ("unable to select an IP from lo network interface").
ADVERTISE_ADDRESS = "192.0.2.10"
KUBEADM_TIMEOUT = 120.0

CA_FILES = ("ca", "etcd/ca", "front-proxy-ca")  # relative to pki/, without .crt/.key
LEAF_FILES = ("apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client",
              "etcd/server", "etcd/peer", "etcd/healthcheck-client")
KUBECONFIGS = ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf")


# --- the tree ------------------------------------------------------------------------------------

def kubeadm_tree_config(node_dir: Path, port: int, *, node: str = "cp-1", cluster_name: str = "kube",
                        advertise_address: str = ADVERTISE_ADDRESS, cert_sans: tuple[str, ...] = ("127.0.0.1", "localhost"),
                        service_cidr: str = "10.96.0.0/12", domain: str = "cluster.local",
                        ecdsa: bool = False) -> str:
    """kubeadm's InitConfiguration + ClusterConfiguration for a tree at node_dir (certificatesDir
    node_dir/pki), reachable at 127.0.0.1:port (controlPlaneEndpoint)."""
    cluster: dict[str, Any] = {
        "apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration",
        "clusterName": cluster_name, "kubernetesVersion": KUBERNETES_VERSION,
        "controlPlaneEndpoint": f"127.0.0.1:{port}", "certificatesDir": str(node_dir / "pki"),
        "networking": {"serviceSubnet": service_cidr, "dnsDomain": domain},
        "apiServer": {"certSANs": list(cert_sans)},
    }
    if ecdsa:
        cluster["featureGates"] = {"PublicKeysECDSA": True}  # 1.24: ECDSA P-256 keys, alpha gate
    docs = [
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "InitConfiguration",
         "localAPIEndpoint": {"advertiseAddress": advertise_address, "bindPort": port},
         "nodeRegistration": {"name": node}},
        cluster,
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def run_kubeadm(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The real kubeadm, no namespace: only for phases whose every output path is given."""
    binary = kube_bin_dir() / "kubeadm"
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=KUBEADM_TIMEOUT,
                            cwd=workdir, env={**os.environ, "HOME": str(workdir)}, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise AssertionError(f"kubeadm {' '.join(args)} exited {result.returncode}: "
                             f"{(result.stderr or result.stdout)[-1500:]}")
    return result


def make_kubeadm_tree(workdir: Path, port: int, *, node: str = "cp-1", **config_kw: Any) -> Path:
    """kubeadm's own /etc/kubernetes for one control-plane node, at `<workdir>/<node>`.

    Writes `<workdir>/kubeadm.yaml` (the config, kept for later kubeadm calls) and returns the node
    directory: pki/{ca,front-proxy-ca}.{crt,key}, pki/etcd/*, pki/apiserver*, pki/sa.{key,pub},
    admin.conf, controller-manager.conf, scheduler.conf, kubelet.conf (no super-admin.conf in 1.24).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    node_dir = workdir / node
    if node_dir.exists():
        raise AssertionError(f"{node_dir} exists: make_kubeadm_tree makes a new tree only")
    config = workdir / "kubeadm.yaml"
    config.write_text(kubeadm_tree_config(node_dir, port, node=node, **config_kw))
    run_kubeadm(workdir, "init", "phase", "certs", "all", "--config", str(config))
    run_kubeadm(workdir, "init", "phase", "kubeconfig", "all", "--config", str(config),
                "--kubeconfig-dir", str(node_dir))
    missing = [rel for rel in (*(f"pki/{b}.{e}" for b in CA_FILES + LEAF_FILES for e in ("crt", "key")),
                               "pki/sa.key", "pki/sa.pub", *KUBECONFIGS) if not (node_dir / rel).is_file()]
    if missing:
        raise AssertionError(f"kubeadm left out {', '.join(missing)}")
    return node_dir


def kubeadm_manifest_commands(node_dir: Path, workdir: Path) -> dict[str, list[str]]:
    """kubeadm's static-pod commands for this tree (etcd, kube-apiserver, kube-controller-manager,
    kube-scheduler), read from the manifests `init phase etcd local` and `init phase control-plane
    all` write. Those phases write /etc/kubernetes/manifests only, so they run in kube.py's private
    mount namespace (root); the manifests land in node_dir/manifests and are removed again."""
    config = workdir / "kubeadm.yaml"
    manifests = node_dir / "manifests"
    if manifests.exists():
        raise AssertionError(f"{manifests} exists already")
    try:
        for index, phase in enumerate((("etcd", "local"), ("control-plane", "all"))):
            result = kubeadm(node_dir, workdir / f"kubeadm-ns-{index}", "init", "phase", *phase, "--config", str(config))
            if result.returncode != 0:
                raise AssertionError(f"kubeadm init phase {' '.join(phase)}: {(result.stderr or result.stdout)[-1500:]}")
        commands = {}
        for path in sorted(manifests.glob("*.yaml")):
            pod = yaml.safe_load(path.read_text())
            commands[path.stem] = list(pod["spec"]["containers"][0]["command"])
        return commands
    finally:
        shutil.rmtree(manifests, ignore_errors=True)


# --- the control plane ---------------------------------------------------------------------------

class KubeadmControlPlane(KubeControlPlane):
    """etcd + kube-apiserver (+ kube-controller-manager) on a kubeadm tree, kubeadm's flags.

    The flags are KubeControlPlane's (kubeadm's static-pod flags, checked against kubeadm's own
    manifests by the smoke test) with loopback addresses, private ports and data dirs, plus what
    kubeadm adds: `--kubelet-preferred-address-types`. The controller-manager gets kubeadm's
    flags including csrsigning (`--cluster-signing-cert-file/--cluster-signing-key-file` =
    pki/ca.crt, pki/ca.key) unless `csrsigning=False` (external-CA mode: `-csrsigning`).
    """

    KUBEADM_APISERVER_ARGS = ("--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",)

    def __init__(self, tree: Path, workdir: Path, apiserver_port: int) -> None:
        super().__init__(tree.parent, workdir, apiserver_port, node=tree.name)
        self.tree = tree

    @property
    def super_admin_kubeconfig(self) -> Path:
        """kubeadm 1.24 writes no super-admin.conf; its admin.conf is O=system:masters, the same power."""
        path = self.node_dir / "super-admin.conf"
        return path if path.exists() else self.admin_kubeconfig

    def apiserver_args(self) -> list[str]:
        args = super().apiserver_args()  # ends with extra_apiserver_args
        cut = len(args) - len(self.extra_apiserver_args)
        return [*args[:cut], *self.KUBEADM_APISERVER_ARGS, *args[cut:]]

    def local_kubeconfig(self, name: str) -> Path:
        """A copy of the tree's kubeconfig `name` pointing at 127.0.0.1:<port> (see the module doc)."""
        doc = yaml.safe_load((self.node_dir / name).read_text())
        for cluster in doc.get("clusters", []):
            cluster["cluster"]["server"] = self.url
        for user in doc.get("users", []):  # vaultk8s's name pki/*.crt relative to the tree: keep them there
            for key in ("client-certificate", "client-key"):
                if user["user"].get(key):
                    user["user"][key] = str(self.node_dir / user["user"][key])
        copy = self.workdir / f"local-{name}"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            yaml.safe_dump(doc, handle, sort_keys=False)
        return copy

    def start_controller_manager(self, extra_args: tuple[str, ...] | list[str] = (), *,
                                 csrsigning: bool = True, signing_pair: tuple[str, str] = ("ca.crt", "ca.key"),
                                 leader_elect: bool = False) -> subprocess.Popen:
        """kube-controller-manager with kubeadm 1.24's flags: csrsigning from pki/ca.crt + pki/ca.key
        (`signing_pair` names other files under pki/), or external-CA mode (`csrsigning=False`:
        `-csrsigning`, no signing files). `--controllers` is a list flag (repeats add up): do not pass
        it in extra_args. leader_elect=False by default (kubeadm: true): a restarted single instance
        would otherwise wait out the old lease (15 s)."""
        cert, key = signing_pair
        signing = ([f"--cluster-signing-cert-file={self.pki / cert}", f"--cluster-signing-key-file={self.pki / key}",
                    "--controllers=*,bootstrapsigner,tokencleaner"] if csrsigning
                   else ["--controllers=*,bootstrapsigner,tokencleaner,-csrsigning"])
        return self.spawn_controller_manager(self.local_kubeconfig("controller-manager.conf"), [
            *signing, f"--leader-elect={'true' if leader_elect else 'false'}", *extra_args])

    def stop_controller_manager(self, proc: subprocess.Popen) -> None:
        stop_process(proc)

    def restart_etcd(self) -> None:
        stop_process(self.etcd)
        self.start_etcd()


@contextlib.contextmanager
def kubeadm_cluster(workdir: Path, *, controller_manager: bool = False,
                    tree_kw: dict[str, Any] | None = None) -> Iterator[KubeadmControlPlane]:
    """A new kubeadm tree under workdir, etcd + kube-apiserver running on it (ready), optionally the
    controller-manager with csrsigning; everything stopped by pid on the way out."""
    kube_bin_dir()
    port = loopback_port()
    tree = make_kubeadm_tree(workdir, port, **(tree_kw or {}))
    plane = KubeadmControlPlane(tree, workdir / "run", port)
    try:
        plane.start()
        if controller_manager:
            plane.start_controller_manager()
        yield plane
    finally:
        plane.stop()


# --- credentials -----------------------------------------------------------------------------------

def kubeconfig_credentials(path: Path) -> dict[str, Any]:
    """server, ca (PEM bytes) and cert/key PEM or token of the first cluster and user of a kubeconfig;
    file references are read now (the caller gets a snapshot, like a process that loaded it)."""
    doc = yaml.safe_load(path.read_text())
    cluster, user = doc["clusters"][0]["cluster"], doc["users"][0]["user"]

    def blob(data_key: str, file_key: str, where: dict[str, Any]) -> bytes | None:
        if where.get(data_key):
            return base64.b64decode(where[data_key])
        if where.get(file_key):
            return (path.parent / where[file_key]).read_bytes()
        return None

    return {"server": cluster["server"], "ca": blob("certificate-authority-data", "certificate-authority", cluster),
            "cert": blob("client-certificate-data", "client-certificate", user),
            "key": blob("client-key-data", "client-key", user), "token": user.get("token")}


def mint_token(plane: KubeControlPlane, name: str = "adopt-probe", namespace: str = "default",
               duration: str = "24h", kubeconfig: Path | None = None) -> str:
    """A bound ServiceAccount token (TokenRequest), signed with the current sa.key. Creates the
    ServiceAccount (none exists without a controller-manager, not even `default`)."""
    conf = kubeconfig or plane.super_admin_kubeconfig
    found = plane.kubectl("get", "serviceaccount", name, "-n", namespace, "-o", "name", kubeconfig=conf, check=False)
    if found.returncode != 0:
        plane.kubectl("create", "serviceaccount", name, "-n", namespace, kubeconfig=conf)
    token = plane.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}", kubeconfig=conf)
    return token.stdout.strip()


# --- request loops -------------------------------------------------------------------------------

class ProbeError(Exception):
    """One failed request; the message is what the loop records."""


class HttpsProbe:
    """GET `path` over a fresh TLS connection per call (so every call sees the certificate the server
    serves now), trusting only `ca_pem` and presenting a client cert or a bearer token. The trust and
    credentials are fixed when the probe is made: a client that loaded its kubeconfig once.

    Returns the served leaf's sha256 fingerprint (hex), which the loop records when it changes.
    """

    def __init__(self, url: str, ca_pem: bytes, *, cert_pem: bytes | None = None, key_pem: bytes | None = None,
                 token: str | None = None, path: str = "/api", timeout: float = 5.0,
                 expect: Callable[[int, bytes], str | None] | None = None) -> None:
        parsed = url.removeprefix("https://").split("/", 1)[0]
        self.host, _, port = parsed.rpartition(":")
        self.port, self.path, self.timeout, self.token = int(port), path, timeout, token
        self.expect = expect or _expect_ok
        self.context = ssl.create_default_context(cadata=ca_pem.decode())
        if cert_pem is not None:
            with tempfile.TemporaryDirectory() as tmp:  # ssl loads a client cert from files only
                cert, key = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
                cert.write_bytes(cert_pem)
                fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
                os.write(fd, key_pem or b"")
                os.close(fd)
                self.context.load_cert_chain(cert, key)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: Path, *, url: str | None = None, **kw: Any) -> "HttpsProbe":
        creds = kubeconfig_credentials(kubeconfig)
        return cls(url or creds["server"], creds["ca"], cert_pem=creds["cert"], key_pem=creds["key"],
                   token=creds["token"], **kw)

    def __call__(self) -> str:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        try:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            conn.request("GET", self.path, headers=headers)
            served = conn.sock.getpeercert(binary_form=True)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as err:
            raise ProbeError(f"{type(err).__name__}: {err}") from None
        finally:
            conn.close()
        problem = self.expect(response.status, body)
        if problem:
            raise ProbeError(problem)
        return hashlib.sha256(served).hexdigest()


def _expect_ok(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"HTTP {status}: {body[:300].decode(errors='replace')}"
    return None


class KubectlProbe:
    """`kubectl get --raw <path>` as a subprocess (~0.15 CPU-s per call here: keep the interval >= 200 ms)."""

    def __init__(self, kubeconfig: Path, *, path: str = "/api", home: Path | None = None, timeout: float = 10.0,
                 server: str | None = None) -> None:
        self.cmd = ["kubectl", f"--kubeconfig={kubeconfig}", "--request-timeout=5s", "get", f"--raw={path}"]
        if server:
            self.cmd.insert(2, f"--server={server}")
        self.env = {**os.environ, "HOME": str(home or Path(tempfile.gettempdir()))}
        self.timeout = timeout

    def __call__(self) -> str | None:
        try:
            result = subprocess.run(self.cmd, capture_output=True, text=True, timeout=self.timeout, env=self.env,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ProbeError(f"kubectl timed out after {self.timeout}s") from None
        if result.returncode != 0:
            raise ProbeError(f"kubectl exit {result.returncode}: {result.stderr.strip()[-400:]}")
        return None


@dataclass(frozen=True)
class Failure:
    at: float  # seconds since the loop started
    error: str


@dataclass
class LoopSummary:
    name: str
    requests: int
    failures: list[Failure]
    changes: list[tuple[float, str]]  # (seconds since start, new detail) each time the detail changed
    seconds: float
    max_latency: float = 0.0  # the slowest request's seconds (a request held while etcd restarts)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def __str__(self) -> str:
        head = (f"{self.name}: {self.requests} requests, {self.failed} failed in {self.seconds:.1f}s "
                f"(slowest {self.max_latency:.2f}s)")
        return head + "".join(f"\n  +{f.at:.2f}s {f.error}" for f in self.failures[:10])


class RequestLoop:
    """Calls `probe()` every `interval` seconds in a daemon thread until stop(); a probe that raises is
    a failure, recorded with its error text and time. Use as a context manager or start()/stop()."""

    def __init__(self, name: str, probe: Callable[[], str | None], interval: float = 0.2) -> None:
        self.name, self.probe, self.interval = name, probe, interval
        self.requests = 0
        self.failures: list[Failure] = []
        self.changes: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._started = 0.0
        self._stopped: float | None = None
        self._last: str | None = None
        self.max_latency = 0.0

    def start(self) -> "RequestLoop":
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"loop-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                detail = self.probe()
                error = None
            except ProbeError as err:
                detail, error = None, str(err)
            except Exception as err:  # noqa: BLE001 - a loop never dies silently
                detail, error = None, f"{type(err).__name__}: {err}"
            with self._lock:
                self.requests += 1
                self.max_latency = max(self.max_latency, time.monotonic() - now)
                if error is not None:
                    self.failures.append(Failure(round(now - self._started, 3), error))
                elif detail is not None and detail != self._last:
                    self.changes.append((round(time.monotonic() - self._started, 3), detail))
                    self._last = detail
            next_at = max(next_at + self.interval, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def wait_requests(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.requests < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: {self.requests} requests in {timeout}s, wanted {count}")
            time.sleep(0.05)

    def wait_change(self, detail_not: str, timeout: float) -> float | None:
        """Seconds since start at which a detail other than detail_not was first seen, or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for at, detail in self.changes:
                    if detail != detail_not:
                        return at
            time.sleep(0.05)
        return None

    def stop(self, timeout: float = 15.0) -> LoopSummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise AssertionError(f"{self.name}: the loop did not stop within {timeout}s")
        if self._stopped is None:
            self._stopped = time.monotonic()
        return self.summary()

    def summary(self) -> LoopSummary:
        with self._lock:
            end = self._stopped or time.monotonic()
            return LoopSummary(self.name, self.requests, list(self.failures), list(self.changes),
                               round(end - self._started, 2), round(self.max_latency, 3))

    def __enter__(self) -> "RequestLoop":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@contextlib.contextmanager
def request_loops(*loops: RequestLoop) -> Iterator[tuple[RequestLoop, ...]]:
    """Start every loop; stop all of them on the way out, even on failure."""
    started: list[RequestLoop] = []
    try:
        for loop in loops:
            started.append(loop.start())
        yield loops
    finally:
        for loop in started:
            with contextlib.suppress(AssertionError):
                loop.stop()


def standard_loops(plane: KubeadmControlPlane, token: str, interval: float = 0.2) -> tuple[RequestLoop, RequestLoop]:
    """The two loops of issue 18: kubeadm's admin.conf, and a ServiceAccount token minted before adoption."""
    admin = HttpsProbe.from_kubeconfig(plane.admin_kubeconfig)
    ca = kubeconfig_credentials(plane.admin_kubeconfig)["ca"]
    sa = HttpsProbe(plane.url, ca, token=token)
    return RequestLoop("admin.conf", admin, interval), RequestLoop("sa-token", sa, interval)


# --- certificates for the measurements ------------------------------------------------------------

def served_certificate(host: str, port: int, timeout: float = 5.0, server_name: str | None = None) -> x509.Certificate:
    """The leaf a TLS server presents now (no verification: this only looks)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=server_name or host) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def load_pair(pki: Path, base: str) -> tuple[x509.Certificate, Any]:
    cert = x509.load_pem_x509_certificate((pki / f"{base}.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / f"{base}.key").read_bytes(), password=None)
    return cert, key


def key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def new_key(kind: str = "ec") -> Any:
    return ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)


def new_ca(common_name: str, kind: str = "rsa", days: int = 3650) -> tuple[x509.Certificate, Any]:
    key = new_key(kind)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca_cert: x509.Certificate, ca_key: Any, common_name: str, *, organization: str | None = None,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = (), server: bool = False, client: bool = False,
          days: int = 30, kind: str = "ec") -> tuple[x509.Certificate, Any]:
    """A leaf signed by ca_key (e.g. kubeadm's pki/ca.key), shaped like kubeadm's."""
    key = new_key(kind)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)] if organization else []
    subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(timezone.utc)
    ekus = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(True, kind == "rsa", False, False, False, False, False, False, False),
                              critical=True)
               .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def same_names_as(cert: x509.Certificate) -> dict[str, tuple[str, ...]]:
    """dns and ips of a certificate's SAN, for issue(..., **same_names_as(old))."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {"dns": (), "ips": ()}
    return {"dns": tuple(san.get_values_for_type(x509.DNSName)),
            "ips": tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))}


def cert_summary(cert: x509.Certificate) -> dict[str, Any]:
    """subject, issuer, SANs, EKUs, key usage, key type and lifetime: what the SAN/EKU comparison lists."""
    def ext(kind):
        try:
            return cert.extensions.get_extension_for_class(kind).value
        except x509.ExtensionNotFound:
            return None

    eku = ext(x509.ExtendedKeyUsage)
    ku = ext(x509.KeyUsage)
    key = cert.public_key()
    key_type = f"rsa-{key.key_size}" if isinstance(key, rsa.RSAPublicKey) else f"ec-{key.curve.name}"
    usages = []
    if ku is not None:
        for name in ("digital_signature", "key_encipherment", "key_cert_sign", "crl_sign", "key_agreement"):
            if getattr(ku, name):
                usages.append(name)
    names = same_names_as(cert)
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "dns": sorted(names["dns"]), "ips": sorted(names["ips"]),
            "eku": sorted(e._name for e in eku) if eku else [], "key_usage": usages, "key": key_type,
            "days": round((cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400, 2)}
