"""Kubeconfigs written by bootstrap, read back by the real kubectl, with Vault-held roots and in HSM mode.

In HSM mode ca.crt is the root only, so a client must present leaf + intermediate: embedded
`client-certificate-data` is the whole pki/<cert>.crt chain, and a TLS server trusting ca.crt alone
accepts kubectl with it (and refuses the leaf alone).
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import stat
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from cryptography.x509.verification import VerificationError

from tests.helpers.cluster import policy_verify
from tests.helpers.hsm import HAVE_SOFTHSM, hsm_section, init_dev_token, token_environ
from tests.helpers.nodes import run_cli, tree_state, write_cluster
from vaultk8s import catalog, crypto
from vaultk8s.catalog import NODE, Server

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
NODES = {"cp-1": ("10.0.0.11", True), "w-1": ("10.0.1.1", False)}


def _view(path: Path, *extra: str) -> dict:
    result = subprocess.run([KUBECTL, "config", "view", "--kubeconfig", str(path), "--raw", "-o", "json", *extra],
                            capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _bootstrap(tmp_path: Path, mount_prefix: str, vault_env, hsm: bool = False) -> tuple[Path, Path]:
    env, sections = dict(vault_env), {}
    if hsm:  # a fresh token; the CLI subprocess reaches it through env only
        env.update(token_environ(init_dev_token(tmp_path / "state")))
        sections["hsm"] = hsm_section("ec-p384")
    cluster = write_cluster(tmp_path, mount_prefix, [("cp-1", NODES["cp-1"][0])], [("w-1", NODES["w-1"][0])],
                            cluster={"name": "it", "endpoint": "https://api.it.example:6443", "apiserver_port": 7443},
                            **sections)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], env)
    return cluster, out


@pytest.fixture
def bootstrapped(tmp_path, vault_env, mount_prefix):
    return _bootstrap(tmp_path, mount_prefix, vault_env)


@pytest.fixture(scope="module")
def hsm_bootstrapped(openbao, tmp_path_factory):
    """One HSM-mode cluster (ec-p384 roots in a fresh SoftHSM token) for the read-only HSM tests."""
    if not HAVE_SOFTHSM:
        pytest.skip("SoftHSM2 is not installed")
    return _bootstrap(tmp_path_factory.mktemp("kubeconfig-hsm"), f"k{uuid.uuid4().hex[:8]}/", openbao.as_environ(),
                      hsm=True)


@pytest.mark.parametrize("mode", ["vault-root", "hsm"])
def test_kubectl_reads_every_kubeconfig(mode, request):
    _, out = request.getfixturevalue("hsm_bootstrapped" if mode == "hsm" else "bootstrapped")
    assert KUBECTL, "kubectl not installed"
    for node, (ip, control_plane) in NODES.items():
        files = sorted(p.name for p in (out / node).glob("*.conf"))
        assert files == sorted(k.file for k in catalog.kubeconfigs_for(control_plane))
        for spec in catalog.kubeconfigs_for(control_plane):
            _check(out / node / spec.file, spec, node, ip, hsm=mode == "hsm")


def _check(path: Path, spec: catalog.KubeconfigSpec, node: str, ip: str, hsm: bool):
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    view = _view(path)
    cluster = view["clusters"][0]["cluster"]
    ca_crt = (path.parent / "pki" / "ca.crt").read_bytes()
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca_crt
    want_server = f"https://{ip}:7443" if spec.server is Server.LOCAL else "https://api.it.example:6443"
    assert cluster["server"] == want_server
    user = view["users"][0]["user"]
    if spec.embed_cert:
        cert_pem = base64.b64decode(user["client-certificate-data"])
        key_pem = base64.b64decode(user["client-key-data"])
    else:
        assert not Path(user["client-certificate"]).is_absolute()
        cert_pem = (path.parent / user["client-certificate"]).read_bytes()
        key_pem = (path.parent / user["client-key"]).read_bytes()
        # --flatten reads the files from cwd=/: kubectl resolves them against the kubeconfig's directory.
        flat = _view(path, "--flatten")["users"][0]["user"]
        assert base64.b64decode(flat["client-certificate-data"]) == cert_pem
    spec_cert = catalog.cert(spec.cert)
    # Embedded or referenced, the client presents the whole pki/ cert file: in HSM mode leaf + intermediate.
    assert cert_pem == (path.parent / "pki" / spec_cert.cert_file).read_bytes()
    chain = crypto.load_certs(cert_pem)
    assert len(chain) == (2 if hsm else 1)
    cert = chain[0]
    assert crypto.key_matches(cert, crypto.load_key(key_pem))
    (root,) = crypto.load_certs(ca_crt)  # ca.crt is one self-signed root in both modes
    assert policy_verify(spec_cert, node, [root], chain)[-1] == root
    if hsm:  # the intermediate is needed: the leaf alone does not chain to the root-only ca.crt
        assert not crypto.signed_by(cert, root)
        with pytest.raises(VerificationError, match="candidates exhausted"):
            policy_verify(spec_cert, node, [root], chain[:1])
    facts = crypto.facts(cert)
    assert facts.common_name == spec_cert.common_name.replace(NODE, node)
    assert facts.organizations == ((spec_cert.organization,) if spec_cert.organization else ())
    assert view["users"][0]["name"] == facts.common_name


def test_rerun_keeps_everything(bootstrapped, vault_env):
    cluster, out = bootstrapped
    before = tree_state(out)
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    assert result.stdout.startswith("no changes")
    assert tree_state(out) == before


def test_force_renew_rewrites_only_embedded_configs(bootstrapped, vault_env):
    cluster, out = bootstrapped
    kubelet = (out / "cp-1" / "kubelet.conf").read_bytes()
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out), "--force-renew"], vault_env)
    rewritten = {line.split()[2] for line in result.stdout.splitlines() if line.startswith("did: write-file")}
    assert rewritten == {"cp-1/admin.conf", "cp-1/super-admin.conf"}
    assert "client certificate re-issued" in result.stdout
    assert (out / "cp-1" / "kubelet.conf").read_bytes() == kubelet
    admin = _view(out / "cp-1" / "admin.conf")["users"][0]["user"]
    assert base64.b64decode(admin["client-certificate-data"]) == (out / "cp-1" / "pki" / "admin.crt").read_bytes()


def test_changed_ca_is_reported_loudly(bootstrapped, vault_env):
    cluster, out = bootstrapped
    path = out / "w-1" / "kubelet.conf"
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(b"an old CA").decode()
    path.write_text(yaml.safe_dump(doc))
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    assert "w-1/kubelet.conf  (CA changed)" in result.stdout
    assert "WARNING: w-1/kubelet.conf now embeds a different cluster CA" in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_moved_api_server_rewrites_local_configs(bootstrapped, vault_env, tmp_path):
    cluster, out = bootstrapped
    data = yaml.safe_load(cluster.read_text())
    data["cluster"]["apiserver_port"] = 8443
    cluster.write_text(yaml.safe_dump(data))
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    changed = sorted(line.split()[2] for line in result.stdout.splitlines() if "server changed" in line)
    assert changed == ["cp-1/controller-manager.conf", "cp-1/scheduler.conf"]


class _TlsServer:
    """A TLS endpoint standing in for kube-apiserver: serves pki/apiserver.crt (leaf + intermediate in
    HSM mode) and, like `--client-ca-file=ca.crt`, requires a client certificate chaining to ca.crt."""

    def __init__(self, pki: Path):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki / "apiserver.crt", pki / "apiserver.key")
        self.context.load_verify_locations(pki / "ca.crt")
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.clients: list[str] = []  # CN of each client that completed the handshake
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            with conn:
                conn.settimeout(5)
                try:
                    with self.context.wrap_socket(conn, server_side=True) as tls:
                        subject = dict(x[0] for x in tls.getpeercert()["subject"])
                        self.clients.append(subject["commonName"])
                        data = b""
                        while b"\r\n\r\n" not in data and (chunk := tls.recv(4096)):
                            data += chunk
                        body = b'{"ok":true}'
                        tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                except (ssl.SSLError, OSError) as err:
                    self.refused.append(str(err))


def _kubectl_get(path: Path, port: int) -> subprocess.CompletedProcess:
    # The apiserver cert has the DNS SAN `kubernetes`; the kubeconfig's own CA data verifies it.
    return subprocess.run([KUBECTL, "--kubeconfig", str(path), "--server", f"https://127.0.0.1:{port}",
                           "--tls-server-name", "kubernetes", "--request-timeout", "5s", "get", "--raw", "/livez"],
                          capture_output=True, text=True, timeout=30, cwd="/")


def test_hsm_mode_kubeconfigs_authenticate_against_root_only_ca(hsm_bootstrapped, tmp_path):
    """kubectl with each control-plane kubeconfig completes mutual TLS with a server that trusts only the
    HSM root; an admin.conf whose client-certificate-data is the leaf alone is refused."""
    assert KUBECTL, "kubectl not installed"
    _, out = hsm_bootstrapped
    node = out / "cp-1"
    specs = catalog.kubeconfigs_for(True)
    with _TlsServer(node / "pki") as server:
        for spec in specs:
            result = _kubectl_get(node / spec.file, server.port)
            assert result.returncode == 0 and '"ok":true' in result.stdout, (spec.file, result.stderr)
        assert server.clients == [catalog.cert(s.cert).common_name.replace(NODE, "cp-1") for s in specs]
        doc = yaml.safe_load((node / "admin.conf").read_text())
        user = doc["users"][0]["user"]
        leaf = crypto.load_certs(base64.b64decode(user["client-certificate-data"]))[0]
        user["client-certificate-data"] = base64.b64encode(crypto.cert_pem(leaf)).decode()
        (tmp_path / "leaf-only.conf").write_text(yaml.safe_dump(doc))
        refused = _kubectl_get(tmp_path / "leaf-only.conf", server.port)
    # Refused by the server's handshake for want of the intermediate, not by a timeout or a wrong address.
    # (kubectl sees the alert or a reset, depending on timing: its message is not checked.)
    assert refused.returncode != 0
    assert len(server.clients) == len(specs)
    assert len(server.refused) == 1 and "unable to get local issuer certificate" in server.refused[0]
