"""A real kubelet (VAULTK8S_KUBE_BIN/kubelet, v1.24) with Debian containerd + runc, for tests.

It follows ../shared/k8s/kubelet exactly: containerd.toml with @STATE@ replaced, kubelet-config.yaml
filled in, run-kubelet.sh under `unshare -m --propagation private` (the sysctl binds it makes stay in
that namespace). Every process is stopped by pid with bounded waits; what the kubelet creates outside
its state folder (/var/lib/kubelet/device-plugins, /var/log/pods, /var/log/containers) is removed
when the last node of this test process stops, if it did not exist before the first one started.

The state folder is a short one under /tmp (a symlink `state` in the workdir points at it): unix
socket paths are limited to 107 bytes, and pytest's tmp_path plus containerd/containerd.sock.ttrpc
goes over that.

A test that needs it skips with a reason when VAULTK8S_KUBE_BIN is unset, kubelet, containerd or
runc is missing, or it does not run as root.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import string
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.helpers.cluster import REPO, run_cli
from tests.helpers.csr import SignerProcess
from tests.helpers.kube import KUBE_BIN_ENV, KubeControlPlane, kube_bin_dir, stop_process, token_kubeconfig
from tests.helpers.ports import find_free_port
from tests.helpers.redacted import RedactedEnv, Secret

DEPLOY_SIGNER = REPO / "deploy" / "signer"
BOOTSTRAP_RBAC = DEPLOY_SIGNER / "kubelet-bootstrap-rbac.yaml"
BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
STOP_TIMEOUT = 15.0
START_TIMEOUT = 30.0
# Created by the kubelet whatever --root-dir says (../shared/k8s/README.md).
HOST_DIRS = (Path("/var/lib/kubelet/device-plugins"), Path("/var/log/pods"), Path("/var/log/containers"))


def kubelet_prereqs() -> tuple[Path, Path]:
    """(kubelet binary, recipe folder ../shared/k8s/kubelet), or skip the test with the reason."""
    folder = kube_bin_dir()  # skips when VAULTK8S_KUBE_BIN is unset, or etcd/kubectl are missing
    kubelet = folder / "kubelet"
    if not kubelet.is_file():
        pytest.skip(f"{KUBE_BIN_ENV}={folder} has no kubelet")
    recipe = folder.parent / "kubelet"
    missing = [f for f in ("containerd.toml", "kubelet-config.yaml", "run-kubelet.sh") if not (recipe / f).is_file()]
    if missing:
        pytest.skip(f"the kubelet recipe folder {recipe} lacks {', '.join(missing)}")
    tools = [t for t in ("containerd", "containerd-shim-runc-v2", "runc", "unshare", "mount") if not shutil.which(t)]
    if tools:
        pytest.skip(f"the real kubelet needs {', '.join(tools)} (Debian containerd, runc; scripts/setup.sh)")
    if os.geteuid() != 0:
        pytest.skip("the real kubelet needs root (containerd, cgroups, a private mount namespace)")
    return kubelet, recipe


def free_port_on(ip: str) -> int:
    return find_free_port(1, ip)


class _HostDirs:
    """Reference-counted record of HOST_DIRS: the first node to start notes which ancestors were
    missing; the last one to stop removes exactly those."""

    lock = threading.Lock()
    users = 0
    created: list[Path] = []

    @classmethod
    def acquire(cls) -> None:
        with cls.lock:
            if cls.users == 0:
                cls.created = []
                for path in HOST_DIRS:
                    top = None  # the highest ancestor that does not exist yet
                    for candidate in [path, *path.parents]:
                        if candidate.exists():
                            break
                        top = candidate
                    if top is not None and top not in cls.created:
                        cls.created.append(top)
            cls.users += 1

    @classmethod
    def release(cls) -> None:
        with cls.lock:
            cls.users -= 1
            if cls.users == 0:
                for top in cls.created:
                    shutil.rmtree(top, ignore_errors=True)
                cls.created = []


def _mounts_under(root: Path) -> list[str]:
    """Mount points under root in this (the host's) mount namespace, deepest first."""
    prefix = str(root.resolve()) + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line mentions text (our own unique state path: containerd shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class KubeletNode:
    """One real kubelet + its own containerd, registering as Node `name` with `node_ip` (a loopback
    address of its own, such as 127.0.1.1; it must be the node's IP in the cluster file for the
    signer to sign its serving certificate)."""

    def __init__(self, workdir: Path, plane: KubeControlPlane, name: str, node_ip: str) -> None:
        self.kubelet_bin, self.recipe = kubelet_prereqs()
        self.workdir, self.plane, self.name, self.node_ip = workdir, plane, name, node_ip
        workdir.mkdir(parents=True, exist_ok=True)
        self.state = Path(tempfile.mkdtemp(prefix="vk8s-kl-", dir="/tmp"))
        link = workdir / "state"
        if not link.exists():
            link.symlink_to(self.state)
        self.cert_dir = self.state / "pki"
        self.kubeconfig = self.state / "kubelet.conf"
        self.port = free_port_on(node_ip)
        self.healthz_port = free_port_on("127.0.0.1")
        self.containerd_log = workdir / f"containerd-{name}.log"
        self.kubelet_log = workdir / f"kubelet-{name}.log"
        self.containerd: subprocess.Popen | None = None
        self.kubelet: subprocess.Popen | None = None
        self._host_dirs = False

    # files -------------------------------------------------------------------------------------
    def _render(self) -> tuple[Path, Path]:
        ctd = self.state / "containerd"
        ctd.mkdir(exist_ok=True)
        toml = self.state / "containerd.toml"
        toml.write_text((self.recipe / "containerd.toml").read_text().replace("@STATE@", str(ctd)))
        config = (self.recipe / "kubelet-config.yaml").read_text()
        for field, value in (("@NODE_IP@", self.node_ip), ("@PORT@", str(self.port)),
                             ("@HEALTHZ_PORT@", str(self.healthz_port)), ("@CA_FILE@", str(self.plane.pki / "ca.crt"))):
            assert field in config, f"{field} not in the recipe's kubelet-config.yaml"
            config = config.replace(field, value)
        (self.state / "kubelet-config.yaml").write_text(config)
        # run-kubelet.sh as shipped, except that it execs the kubelet of VAULTK8S_KUBE_BIN.
        script = (self.recipe / "run-kubelet.sh").read_text()
        assert '"$HERE/../bin/kubelet"' in script, "run-kubelet.sh no longer execs $HERE/../bin/kubelet"
        run = self.state / "run-kubelet.sh"
        run.write_text(script.replace('"$HERE/../bin/kubelet"', f'"{self.kubelet_bin}"'))
        return toml, run

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    # lifecycle ---------------------------------------------------------------------------------
    def start(self, bootstrap_kubeconfig: Path) -> None:
        """containerd, then the kubelet with this bootstrap kubeconfig; returns once both run (the
        TLS bootstrap then proceeds on its own: wait_client_cert / wait_registered)."""
        toml, run = self._render()
        _HostDirs.acquire()
        self._host_dirs = True
        try:
            with open(self.containerd_log, "ab") as log:
                self.containerd = subprocess.Popen([shutil.which("containerd"), "--config", str(toml)], stdout=log,
                                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._wait_containerd()
            with open(self.kubelet_log, "ab") as log:
                self.kubelet = subprocess.Popen(
                    ["unshare", "-m", "--propagation", "private", "sh", str(run), str(self.state),
                     str(bootstrap_kubeconfig), self.name, self.node_ip],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self._wait_kubelet_healthz()
        except BaseException:
            self.stop()
            raise

    def _wait_containerd(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.containerd.poll() is not None:
                raise AssertionError(f"containerd exited with {self.containerd.returncode}: "
                                     f"{self.log_tail(which='containerd')}")
            if self.containerd_socket.is_socket():
                probe = subprocess.run(["ctr", "--address", str(self.containerd_socket), "version"],
                                       capture_output=True, text=True, timeout=10) if shutil.which("ctr") else None
                if probe is None or probe.returncode == 0:
                    return
            time.sleep(0.2)
        raise AssertionError(f"containerd not serving within {timeout}s: {self.log_tail(which='containerd')}")

    def _wait_kubelet_healthz(self, timeout: float = START_TIMEOUT) -> None:
        """The kubelet's /healthz on 127.0.0.1 (plain HTTP): it answers once the kubelet runs."""
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubelet.poll() is not None:
                raise AssertionError(f"kubelet exited with {self.kubelet.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"http://127.0.0.1:{self.healthz_port}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"kubelet /healthz not ok within {timeout}s: {self.log_tail()}")

    def running(self) -> bool:
        return self.kubelet is not None and self.kubelet.poll() is None

    def stop(self) -> None:
        """kubelet, then containerd (and any shim of this containerd), by pid with bounded waits;
        unmount what is left under the state folder; release the host folders. Idempotent."""
        try:
            stop_process(self.kubelet, STOP_TIMEOUT)
            stop_process(self.containerd, STOP_TIMEOUT)
            for pid in _pids_mentioning(str(self.state) + "/"):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for point in _mounts_under(self.state):
                subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        finally:
            if self._host_dirs:
                self._host_dirs = False
                _HostDirs.release()

    def cleanup(self) -> None:
        """stop(), then remove the state folder (certificates included) and the workdir's link."""
        self.stop()
        if not _mounts_under(self.state):
            shutil.rmtree(self.state, ignore_errors=True)
        link = self.workdir / "state"
        if link.is_symlink():
            link.unlink()

    def __enter__(self) -> "KubeletNode":
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # certificates ------------------------------------------------------------------------------
    def _cert(self, file: str) -> x509.Certificate:
        """The certificate in a kubelet `*-current.pem` (it holds the key too: never print the file)."""
        return x509.load_pem_x509_certificates((self.cert_dir / file).read_bytes())[0]

    def client_cert(self) -> x509.Certificate:
        return self._cert("kubelet-client-current.pem")

    def serving_cert(self) -> x509.Certificate:
        return self._cert("kubelet-server-current.pem")

    def _wait_cert(self, file: str, timeout: float, other_than: int | None) -> x509.Certificate:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"kubelet exited with {self.kubelet.returncode}: {self.log_tail()}")
            try:
                cert = self._cert(file)
                if other_than is None or cert.serial_number != other_than:
                    return cert
            except (OSError, ValueError):  # not there yet, or mid-swap
                pass
            time.sleep(0.5)
        raise AssertionError(f"no {'new ' if other_than else ''}{file} within {timeout}s: {self.log_tail()}")

    def wait_client_cert(self, timeout: float = 60, other_than: int | None = None) -> x509.Certificate:
        """kubelet-client-current.pem (one whose serial is not other_than, for a rotation)."""
        return self._wait_cert("kubelet-client-current.pem", timeout, other_than)

    def wait_serving_cert(self, timeout: float = 60, other_than: int | None = None) -> x509.Certificate:
        return self._wait_cert("kubelet-server-current.pem", timeout, other_than)

    # the Node object ---------------------------------------------------------------------------
    def node(self) -> dict | None:
        result = self.plane.kubectl("get", "node", self.name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_registered(self, timeout: float = 60) -> dict:
        """The Node object exists (it stays NotReady: no CNI, fine for certificates)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"kubelet exited with {self.kubelet.returncode}: {self.log_tail()}")
            if node := self.node():
                return node
            time.sleep(0.5)
        raise AssertionError(f"Node {self.name} not registered within {timeout}s: {self.log_tail()}")

    def patch_addresses(self) -> None:
        """The kubelet refuses a loopback node IP, so its Node has no addresses and it never asks for
        a serving certificate: give it InternalIP + Hostname once (status subresource)."""
        patch = {"status": {"addresses": [{"type": "InternalIP", "address": self.node_ip},
                                          {"type": "Hostname", "address": self.name}]}}
        self.plane.kubectl("patch", "node", self.name, "--subresource=status", "--type=merge", "-p", json.dumps(patch))

    def csrs(self) -> list[dict]:
        """The CertificateSigningRequests whose request's CN is system:node:<name>, oldest first."""
        items = json.loads(self.plane.kubectl("get", "csr", "-o", "json").stdout)["items"]
        mine = []
        for csr in items:
            request = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
            cns = [a.value for a in request.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
            if cns == [f"system:node:{self.name}"]:
                mine.append(csr)
        return sorted(mine, key=lambda c: c["metadata"]["creationTimestamp"])

    def lease_renew_time(self) -> datetime | None:
        """spec.renewTime of the node's Lease in kube-node-lease (the kubelet renews it every 10 s)."""
        result = self.plane.kubectl("-n", "kube-node-lease", "get", "lease", self.name,
                                    "-o", "jsonpath={.spec.renewTime}", check=False)
        text = result.stdout.strip() if result.returncode == 0 else ""
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None

    def log_tail(self, chars: int = 2000, which: str = "kubelet") -> str:
        path = self.kubelet_log if which == "kubelet" else self.containerd_log
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


# bootstrap tokens and RBAC -----------------------------------------------------------------------
def create_bootstrap_token(plane: KubeControlPlane, ttl: timedelta = timedelta(hours=1)) -> Secret:
    """A kubeadm-style bootstrap token Secret in kube-system; returns `id.secret` (its repr is hidden)."""
    alphabet = string.ascii_lowercase + string.digits
    token_id = "".join(secrets.choice(alphabet) for _ in range(6))
    secret = "".join(secrets.choice(alphabet) for _ in range(16))
    expiration = (datetime.now(timezone.utc) + ttl).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc = {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
           "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
           "stringData": {"token-id": token_id, "token-secret": secret, "expiration": expiration,
                          "usage-bootstrap-authentication": "true", "auth-extra-groups": BOOTSTRAP_GROUP}}
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    return Secret(f"{token_id}.{secret}")


def write_bootstrap_kubeconfig(plane: KubeControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig (0600) with the cluster CA embedded and the bootstrap token as its user."""
    ca = base64.b64encode((plane.pki / "ca.crt").read_bytes()).decode()
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "tls-bootstrap",
           "clusters": [{"name": "kube", "cluster": {"server": plane.url, "certificate-authority-data": ca}}],
           "users": [{"name": "tls-bootstrap-token-user", "user": {"token": str(token)}}],
           "contexts": [{"name": "tls-bootstrap", "context": {"cluster": "kube", "user": "tls-bootstrap-token-user"}}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def bootstrap_kubeconfig(plane: KubeControlPlane, path: Path) -> Path:
    """create_bootstrap_token + write_bootstrap_kubeconfig: the token stays in the file only."""
    return write_bootstrap_kubeconfig(plane, create_bootstrap_token(plane), path)


def apply_bootstrap_rbac(plane: KubeControlPlane) -> None:
    """deploy/signer/kubelet-bootstrap-rbac.yaml: kubeadm's ClusterRoleBindings the CSR approver needs."""
    plane.kubectl("apply", "-f", str(BOOTSTRAP_RBAC))


# the signer, as tests/integration/test_signer_kube.py runs it ---------------------------------------
_TOKEN_MINTER = """apiVersion: v1
kind: ServiceAccount
metadata: {name: vaultk8s-test-token-minter, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: vaultk8s-test-token-minter, namespace: kube-system}
rules:
- {apiGroups: [""], resources: [serviceaccounts/token], resourceNames: [vaultk8s-signer], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: vaultk8s-test-token-minter, namespace: kube-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: vaultk8s-test-token-minter}
subjects:
- {kind: ServiceAccount, name: vaultk8s-test-token-minter, namespace: kube-system}
"""


def token_minter_kubeconfig(plane: KubeControlPlane, path: Path, hours: int = 2) -> Path:
    """The kubelet's one power a projected token needs (TokenRequest for vaultk8s-signer), as a
    ServiceAccount token of `hours`: it outlives admin.conf, which only a person's bootstrap renews."""
    plane.kubectl("apply", "-f", "-", input=_TOKEN_MINTER)
    token = Secret(plane.kubectl("-n", "kube-system", "create", "token", "vaultk8s-test-token-minter",
                                 f"--duration={hours}h").stdout.strip())
    return token_kubeconfig(plane, token, path)
def start_signer(plane: KubeControlPlane, vault_env: dict[str, str], workdir: Path, *extra: str,
                 jwt_file: Path | None = None) -> SignerProcess:
    """deploy/signer applied (its ServiceAccount and RBAC, kubeadm's bootstrap bindings; the Deployment
    stays unscheduled: no scheduler runs), policies applied, and `vaultk8s signer --approve-serving`
    running with no Vault token: it logs in with the csr-signer AppRole credential, or with jwt_file
    (a projected-token stand-in: write_projected_token keeps it fresh) through the JWT method. Its
    Kubernetes API identity is a token of its ServiceAccount."""
    plane.kubectl("apply", "-f", str(DEPLOY_SIGNER))
    run_cli("policy", "apply", "--config", str(plane.cluster_file), env=vault_env, check=True)
    if jwt_file is not None:
        write_projected_token(plane, jwt_file)
        login = ["--jwt-file", str(jwt_file)]
    else:
        credentials = workdir / "signer-creds"
        run_cli("signer-credentials", "--config", str(plane.cluster_file), "--out", str(credentials),
                env=vault_env, check=True)
        login = ["--credentials", str(credentials)]
    token = Secret(plane.kubectl("-n", "kube-system", "create", "token", "vaultk8s-signer",
                                 "--duration=2h").stdout.strip())
    kubeconfig = token_kubeconfig(plane, token, workdir / "signer.conf")
    env = RedactedEnv({k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"})
    return SignerProcess(workdir, env, "--config", str(plane.cluster_file), "--kubeconfig", str(kubeconfig),
                         *login, "--approve-serving", *extra)


def write_projected_token(plane: KubeControlPlane, path: Path, minutes: int = 10,
                          kubeconfig: Path | None = None) -> None:
    """What the kubelet puts in the signer pod's projected volume: a TokenRequest token for
    vaultk8s-signer, audience vaultk8s (deploy/signer/signer.yaml), replaced atomically, 0600.
    Asked for as kubeconfig's identity (default admin.conf, whose certificate lives one leaf_ttl)."""
    token = plane.kubectl("-n", "kube-system", "create", "token", "vaultk8s-signer", "--audience=vaultk8s",
                          f"--duration={minutes}m", kubeconfig=kubeconfig).stdout.strip()
    scratch = path.with_name(path.name + ".new")
    scratch.touch(mode=0o600)
    scratch.write_text(token)
    os.replace(scratch, path)


def vault_serial(cert: x509.Certificate) -> str:
    """A certificate's serial as OpenBao lists it under <mount>/certs: lower-case hex pairs joined by
    ':' (HashiCorp Vault joins them by '-': compare with normalise_serial on both sides)."""
    text = f"{cert.serial_number:x}"
    text = text.rjust(len(text) + len(text) % 2, "0")
    return ":".join(text[i:i + 2] for i in range(0, len(text), 2))


def normalise_serial(serial: str) -> str:
    return serial.lower().replace("-", ":")
