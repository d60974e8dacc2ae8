"""The top-level docker-compose.yml, brought up for real on a private dockerd, in both CA modes.

Images are built from the repo's Dockerfile on a base made here with debootstrap (no image
registry is reachable); an override file swaps only the image names. Proves: bootstrap finished;
etcd serves client and peer mTLS from the agent-written files and answers `endpoint health`; a
SIGHUP to the agent replaces the files and etcd, still answering, serves the new certificates; the
agent's container holds no operator token; `docker-compose down -v` leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.helpers import docker
from vaultk8s import crypto

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("openbao", "bootstrap", "agent", "etcd")
PKI = "/etc/kubernetes/pki"
ETCDCTL_TLS = [f"--cacert={PKI}/etcd/ca.crt", f"--cert={PKI}/etcd/healthcheck-client.crt",
               f"--key={PKI}/etcd/healthcheck-client.key"]
# Run in the agent's container: which certificate does etcd present on HOST:PORT to a client
# holding the healthcheck-client certificate? (It prints the serial.)
PROBE = """
import socket, ssl, sys
from cryptography import x509
ctx = ssl.create_default_context(cafile="/etc/kubernetes/pki/etcd/ca.crt")
ctx.load_cert_chain("/etc/kubernetes/pki/etcd/healthcheck-client.crt", "/etc/kubernetes/pki/etcd/healthcheck-client.key")
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=sys.argv[1]) as tls:
        print(x509.load_der_x509_certificate(tls.getpeercert(True)).serial_number)
"""


@pytest.fixture(scope="session")
def engine(tmp_path_factory):
    reason = docker.why_docker_cannot_run()
    if reason:
        pytest.skip(reason)
    with docker.engine(tmp_path_factory.mktemp("dockerd")) as eng:
        yield eng


@pytest.fixture(scope="session")
def images(engine, tmp_path_factory) -> dict[str, str]:
    """vaultk8s and etcd images from the repo's Dockerfile, on the locally made base."""
    base = docker.local_base_image(engine, tmp_path_factory.mktemp("base"))
    files = [REPO / "Dockerfile", REPO / ".dockerignore", REPO / "pyproject.toml", REPO / "README.md",
             *sorted((REPO / "vaultk8s").rglob("*.py"))]
    tags = {target: docker.build_image(engine, REPO, files, f"vaultk8s-test-{target}", target=target,
                                       build_args={"BASE": base}) for target in ("vaultk8s", "etcd")}
    docker.prune_images(engine, keep=[base, docker.rootfs_image(), *tags.values()])
    return tags


@dataclass
class Demo:
    engine: docker.Engine
    project: str
    files: list[Path]
    images: dict[str, str]

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        argv = [docker.COMPOSE, "-p", self.project, "--project-directory", str(REPO)]
        for f in self.files:
            argv += ["-f", str(f)]
        return docker.run([*argv, *args], env=self.engine.env, timeout=timeout, check=check, cwd=REPO)

    def container(self, service: str) -> str:
        ids = self.engine.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}",
                                 "--filter", f"label=com.docker.compose.service={service}").stdout.split()
        assert len(ids) == 1, f"{service}: containers {ids}"
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(self.engine.docker("inspect", self.container(service)).stdout)[0]

    def exec(self, service: str, *argv: str, check: bool = True, timeout: float = 60, text: bool = True):
        return self.engine.docker("exec", self.container(service), *argv, check=check, timeout=timeout, text=text)

    def serial(self, path: str) -> int:
        pem = self.exec("agent", "cat", path).stdout.encode()
        return x509.load_pem_x509_certificate(pem).serial_number

    def served_serial(self, port: int) -> int:
        return int(self.exec("agent", "python3", "-c", PROBE, "cp-1", str(port)).stdout)

    def etcd_health(self, *tls: str, check: bool = True):
        return self.exec("etcd", "etcdctl", "--endpoints=https://cp-1:2379", *tls, "endpoint", "health",
                         check=check)

    def leftovers(self) -> dict[str, list[str]]:
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: self.engine.docker(*cmd, "--filter", label).stdout.split()
                for kind, cmd in (("containers", ("ps", "-aq")), ("volumes", ("volume", "ls", "-q")),
                                  ("networks", ("network", "ls", "-q")))}


@pytest.fixture(scope="module", params=["vault-root", "hsm"])
def demo(request, engine, images, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"compose-{request.param}")
    override = tmp / "docker-compose.images.yml"  # swaps only the image sources
    override.write_text(json.dumps({"services": {
        name: {"image": images["etcd" if name == "etcd" else "vaultk8s"]} for name in SERVICES}}))
    files = [REPO / "docker-compose.yml"]
    if request.param == "hsm":
        files.append(REPO / "docker-compose.hsm.yml")
    d = Demo(engine, f"vk8s{uuid.uuid4().hex[:8]}", [*files, override], images)
    try:
        # up waits for openbao healthy, bootstrap done and the agent healthy before starting etcd.
        up = d.compose("up", "-d", "--no-build", timeout=600, check=False)
        assert up.returncode == 0, f"{up.stderr[-3000:]}\n{d.compose('logs', '--tail=40').stdout[-6000:]}"
        _wait(lambda: d.inspect("etcd")["State"].get("Health", {}).get("Status") == "healthy", 180,
              "etcd's healthcheck (etcdctl over mTLS) to pass", lambda: d.compose("logs", "--tail=40").stdout)
        yield d
    finally:
        d.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180, check=False)


def _wait(check, timeout: float, what: str, diagnose=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f}s for {what}\n{diagnose()[-6000:]}")
        time.sleep(1)


def test_compose_bootstrap_finished(demo):
    state = demo.inspect("bootstrap")["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    logs = demo.engine.docker("logs", demo.container("bootstrap")).stdout
    assert "bootstrap done: credentials for cp-1" in logs
    # The enrolment secret_id is used once: after the agent's first certificate login it destroys it
    # in Vault and deletes the file (docs/identity.md); what stays is not secret on its own.
    deadline, files = time.monotonic() + 90, []
    while time.monotonic() < deadline:
        files = sorted(demo.exec("agent", "ls", "/var/lib/vaultk8s/credentials").stdout.split())
        if files == ["approle_mount", "role_id", "vault-ca.pem"]:
            break
        time.sleep(2)
    assert files == ["approle_mount", "role_id", "vault-ca.pem"], files


def test_compose_etcd_answers_over_mtls_with_agent_written_certs(demo):
    health = demo.etcd_health(*ETCDCTL_TLS)
    assert "is healthy" in health.stdout + health.stderr
    # Client-cert auth is on: the CA alone is not let in.
    refused = demo.etcd_health(f"--cacert={PKI}/etcd/ca.crt", "--dial-timeout=3s", "--command-timeout=3s",
                               check=False)
    assert refused.returncode != 0
    # What etcd presents on both listeners is what the agent wrote (files are symlinks into ..data).
    assert demo.served_serial(2379) == demo.serial(f"{PKI}/etcd/server.crt")
    assert demo.served_serial(2380) == demo.serial(f"{PKI}/etcd/peer.crt")
    assert demo.exec("agent", "readlink", f"{PKI}/etcd").stdout.strip().startswith("..data")


def test_compose_chains_match_the_ca_mode(demo):
    """HSM mode: etcd trusts the token's root alone, and every leaf comes with Vault's intermediate."""
    hsm = any(f.name == "docker-compose.hsm.yml" for f in demo.files)
    (root,) = crypto.load_certs(demo.exec("agent", "cat", f"{PKI}/etcd/ca.crt").stdout.encode())
    assert crypto.is_self_signed(root)
    for name in ("server", "peer", "healthcheck-client"):
        chain = crypto.load_certs(demo.exec("agent", "cat", f"{PKI}/etcd/{name}.crt").stdout.encode())
        assert len(chain) == (2 if hsm else 1), name
        assert crypto.signed_by(chain[-1], root) and crypto.signed_by(chain[0], chain[-1] if hsm else root), name
    if hsm:  # the token is in the bootstrap-only volume
        mounts = [m.get("Name", "") for m in demo.inspect("bootstrap")["Mounts"]]
        assert f"{demo.project}_softhsm" in mounts


def test_compose_sighup_renews_and_etcd_keeps_answering(demo):
    names = ("server", "peer", "healthcheck-client")
    before = {n: demo.serial(f"{PKI}/etcd/{n}.crt") for n in names}
    data_before = demo.exec("agent", "readlink", f"{PKI}/..data").stdout.strip()
    demo.engine.docker("kill", "--signal", "HUP", demo.container("agent"))
    _wait(lambda: all(demo.serial(f"{PKI}/etcd/{n}.crt") != before[n] for n in names), 90,
          "the agent to renew etcd's certificates after SIGHUP",
          lambda: demo.engine.docker("logs", "--tail=30", demo.container("agent")).stderr)
    assert demo.exec("agent", "readlink", f"{PKI}/..data").stdout.strip() != data_before
    result = demo.etcd_health(*ETCDCTL_TLS)  # the renewed client certificate is accepted
    assert "is healthy" in result.stdout + result.stderr
    # etcd reloads its files per handshake: the renewed certificates are what it now serves.
    _wait(lambda: demo.served_serial(2379) == demo.serial(f"{PKI}/etcd/server.crt"), 30, "etcd to serve the renewed cert")
    assert demo.served_serial(2380) == demo.serial(f"{PKI}/etcd/peer.crt")
    assert demo.inspect("agent")["State"]["Running"]


def test_compose_agent_healthz_and_readyz(demo):
    fetch = ("import sys, urllib.request\n"
             "r = urllib.request.urlopen('http://127.0.0.1:9469' + sys.argv[1], timeout=5)\n"
             "print(r.status, r.read().decode())")
    for path in ("/healthz", "/readyz"):
        assert demo.exec("agent", "python3", "-c", fetch, path).stdout.startswith("200"), path
    assert "vaultk8s_certificate_expiry_timestamp_seconds" in demo.exec("agent", "python3", "-c", fetch,
                                                                        "/metrics").stdout
    assert demo.inspect("agent")["State"]["Health"]["Status"] == "healthy"


def test_compose_agent_holds_no_operator_token(demo):
    init = json.loads(demo.engine.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "cat",
        "-v", f"{demo.project}_operator:/operator:ro", demo.images["vaultk8s"], "/operator/init.json").stdout)
    secrets = [init["root_token"].encode(), *(k.encode() for k in init["unseal_keys_b64"])]
    info = demo.inspect("agent")
    env = info["Config"]["Env"]
    assert not [e for e in env if e.startswith(("VAULT_TOKEN=", "BAO_TOKEN="))]
    assert not [e for e in env if any(s in e.encode() for s in secrets)]
    mounted = {m.get("Name") or m["Source"]: m["Destination"] for m in info["Mounts"]}
    assert not [n for n in mounted if n.endswith(("_operator", "_openbao", "_softhsm"))], mounted
    assert all(s not in demo.exec("agent", "cat", "/proc/1/environ").stdout.encode() for s in secrets)
    # Every file the container can see outside the image's own /usr and /opt, volumes included.
    tar = demo.exec("agent", "tar", "-cf", "-", "--exclude=./proc", "--exclude=./sys", "--exclude=./dev",
                    "--exclude=./usr", "--exclude=./opt", "-C", "/", ".", check=False, timeout=120, text=False)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout), mode="r|") as archive:
        seen = 0
        for member in archive:
            if member.isfile():
                content = archive.extractfile(member).read()
                seen += 1
                assert not any(s in content for s in secrets), f"operator secret in {member.name}"
                assert not member.name.endswith("init.json")
    assert seen > 100


def test_compose_openbao_restart_then_bootstrap_again_unseals_and_renewal_goes_on(demo):
    """OpenBao comes back sealed; re-running the one-shot bootstrap unseals it and changes nothing else."""
    demo.compose("restart", "openbao", timeout=120)
    _wait(lambda: demo.inspect("openbao")["State"].get("Health", {}).get("Status") == "healthy", 90,
          "openbao to answer after its restart")
    again = demo.compose("run", "--rm", "-T", "bootstrap", timeout=300)
    said = again.stdout + again.stderr
    assert "unsealed OpenBao" in said and "initialised" not in said
    assert "bootstrap done: credentials for cp-1" in said
    before = demo.serial(f"{PKI}/etcd/server.crt")
    demo.engine.docker("kill", "--signal", "HUP", demo.container("agent"))
    _wait(lambda: demo.serial(f"{PKI}/etcd/server.crt") != before, 90, "a renewal with the new secret_id",
          lambda: demo.engine.docker("logs", "--tail=30", demo.container("agent")).stderr)
    result = demo.etcd_health(*ETCDCTL_TLS)
    assert "is healthy" in result.stdout + result.stderr


def test_compose_down_leaves_nothing(demo):
    demo.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=180)
    assert demo.leftovers() == {"containers": [], "volumes": [], "networks": []}
