"""`vaultk8s signer` against a real kube-apiserver + kube-controller-manager (`--controllers=*,-csrsigning`,
external-CA mode: nothing else signs) + etcd + OpenBao.

The signer runs as a process with exactly deploy/signer's RBAC (a token of its ServiceAccount) and
the csr-signer AppRole credential from `vaultk8s signer-credentials` (no root token). Identities are
read from the API server's own records: the username and groups it stores on a CSR one creates.
"Nothing signed" is counted in Vault: the number of certificates the kubernetes-ca mount issued.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import string
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from vaultk8s import crypto
from vaultk8s.config import ClusterConfig, load_config

from tests.helpers.cluster import REPO, openssl_verify, run_cli
from tests.helpers.csr import (CLIENT_USAGES, SignerProcess, TcpProxy, conditions, get_csr, issued_pem, make_request,
                               metric_total, post_csr, wait_csr)
from tests.helpers.kube import KubeControlPlane, loopback_port, running_control_plane, token_kubeconfig
from tests.helpers.hsm import hsm_section, init_dev_token, needs_softhsm, token_environ
from tests.helpers.policy import call

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy" / "signer"
SA = "system:serviceaccount:kube-system:vaultk8s-signer"


@dataclass
class Kube:
    plane: KubeControlPlane
    env: dict[str, str]
    config: ClusterConfig
    credentials: Path
    kubeconfig: Path  # the signer's ServiceAccount token

    def signer(self, *extra: str, vault_addr: str | None = None, credentials: Path | None = None) -> SignerProcess:
        env = {k: v for k, v in self.env.items() if k != "VAULT_TOKEN"}  # only the AppRole credential
        if vault_addr:
            env["VAULT_ADDR"] = vault_addr
        return SignerProcess(self.plane.workdir, env, "--config", str(self.plane.cluster_file),
                             "--kubeconfig", str(self.kubeconfig), "--credentials", str(credentials or self.credentials),
                             "--approve-serving", *extra)

    def issued_count(self) -> int:
        """Certificates the kubernetes-ca mount has issued so far (Vault's own list)."""
        resp = call(self.env, self.env["VAULT_TOKEN"], "LIST", f"{self.config.mount('kubernetes-ca')}/certs")
        return len(resp.json()["data"]["keys"])


@pytest.fixture(scope="module")
def kube(openbao, tmp_path_factory) -> Kube:
    tmp = tmp_path_factory.mktemp("signer")
    env = openbao.as_environ()
    prefix = f"s{secrets.token_hex(4)}/"
    with running_control_plane(tmp, env, prefix, workers=2) as plane:
        plane.start_controller_manager()
        dry = plane.kubectl("apply", "--dry-run=server", "-f", str(DEPLOY))
        assert "(server dry run)" in dry.stdout
        plane.kubectl("apply", "-f", str(DEPLOY))  # the Deployment stays unscheduled: no scheduler runs
        run_cli("policy", "apply", "--config", str(plane.cluster_file), env=env, check=True)
        credentials = tmp / "signer-creds"
        run_cli("signer-credentials", "--config", str(plane.cluster_file), "--out", str(credentials), env=env,
                check=True)
        token = plane.kubectl("-n", "kube-system", "create", "token", "vaultk8s-signer", "--duration=2h").stdout.strip()
        yield Kube(plane, env, load_config(plane.cluster_file), credentials,
                   token_kubeconfig(plane, token, tmp / "signer.conf"))


def _bootstrap_token(plane: KubeControlPlane) -> str:
    """A kubeadm-style bootstrap token Secret; returns `id.secret`."""
    alphabet = string.ascii_lowercase + string.digits
    token_id = "".join(secrets.choice(alphabet) for _ in range(6))
    secret = "".join(secrets.choice(alphabet) for _ in range(16))
    doc = {"apiVersion": "v1", "kind": "Secret", "type": "bootstrap.kubernetes.io/token",
           "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
           "stringData": {"token-id": token_id, "token-secret": secret, "usage-bootstrap-authentication": "true",
                          "usage-bootstrap-signing": "true",
                          "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}}
    plane.kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    return f"{token_id}.{secret}"


def _cert_kubeconfig(plane: KubeControlPlane, cert: bytes, key, path: Path) -> Path:
    (path.parent / f"{path.stem}.crt").write_bytes(cert)
    key_file = path.parent / f"{path.stem}.key"
    key_file.write_bytes(crypto.key_pem(key))
    key_file.chmod(0o600)
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": {"server": plane.url, "certificate-authority": str(plane.pki / "ca.crt")}}],
           "users": [{"name": "u", "user": {"client-certificate": str(path.parent / f"{path.stem}.crt"),
                                           "client-key": str(key_file)}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


def _lifetime(csr: dict) -> float:
    cert = crypto.load_certs(issued_pem(csr))[0]
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()


def test_deploy_rbac_grants_sign_on_exactly_the_kubelet_signer_names(kube):
    plane = kube.plane

    def can(verb, resource):  # a SubjectAccessReview: the authorizer's own answer for the ServiceAccount
        kind, _, name = resource.partition("/")
        resource, _, group = kind.partition(".")
        attrs = {"verb": verb, "group": group, "resource": resource, **({"name": name} if name else {})}
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                  "spec": {"user": SA, "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                                  "system:authenticated"], "resourceAttributes": attrs}}
        result = plane.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review))
        return json.loads(result.stdout)["status"].get("allowed", False)

    assert can("sign", "signers.certificates.k8s.io/kubernetes.io/kube-apiserver-client-kubelet")
    assert can("sign", "signers.certificates.k8s.io/kubernetes.io/kubelet-serving")
    assert can("approve", "signers.certificates.k8s.io/kubernetes.io/kubelet-serving")
    for other in ("kubernetes.io/kube-apiserver-client", "kubernetes.io/legacy-unknown", "example.com/any"):
        assert not can("sign", f"signers.certificates.k8s.io/{other}")
        assert not can("approve", f"signers.certificates.k8s.io/{other}")
    assert not can("approve", "signers.certificates.k8s.io/kubernetes.io/kube-apiserver-client-kubelet")
    assert not can("delete", "certificatesigningrequests") and not can("get", "secrets")


def test_kubelet_tls_bootstrap_is_approved_by_kcm_and_signed_by_vault(kube):
    plane = kube.plane
    token = _bootstrap_token(plane)
    key, pem = make_request("system:node:worker-2")
    before = kube.issued_count()
    with kube.signer() as signer:
        name = post_csr(plane, pem, token=token)
        csr = wait_csr(plane, name)
        assert signer.proc.poll() is None, signer.text()
    assert csr["spec"]["username"] == f"system:bootstrap:{token.split('.')[0]}"
    assert conditions(csr)["Approved"]["reason"] == "AutoApproved"  # kube-controller-manager's approver
    assert kube.issued_count() == before + 1
    chain = crypto.load_certs(issued_pem(csr))
    facts = crypto.facts(chain[0])
    assert (facts.common_name, facts.organizations) == ("system:node:worker-2", ("system:nodes",))
    assert crypto.key_matches(chain[0], key)

    # The new certificate authenticates as the node: the API server records who created this CSR.
    conf = _cert_kubeconfig(plane, issued_pem(csr), key, plane.workdir / "bootstrapped.conf")
    _, probe = make_request("system:node:worker-2")
    probe_name = post_csr(plane, probe, kubeconfig=conf)
    recorded = get_csr(plane, probe_name)["spec"]
    assert recorded["username"] == "system:node:worker-2"
    assert "system:nodes" in recorded["groups"]
    plane.kubectl("delete", "csr", probe_name)  # renewals are the next test's subject


def test_renewal_and_serving_certificates(kube):
    plane, kubelet_conf = kube.plane, kube.plane.out / "worker-1" / "kubelet.conf"
    _, client_pem = make_request("system:node:worker-1")
    _, short_pem = make_request("system:node:worker-1")
    _, long_pem = make_request("system:node:worker-1")
    serving_key, serving_pem = make_request("system:node:worker-1", dns=["worker-1"], ips=["127.0.1.1"])
    before = kube.issued_count()
    posted_while_down = post_csr(plane, client_pem, kubeconfig=kubelet_conf)  # found by the first list
    with kube.signer():
        renewal = wait_csr(plane, posted_while_down)
        short = wait_csr(plane, post_csr(plane, short_pem, kubeconfig=kubelet_conf, expiration_seconds=3600))
        long = wait_csr(plane, post_csr(plane, long_pem, kubeconfig=kubelet_conf, expiration_seconds=10 * 86400))
        serving = wait_csr(plane, post_csr(plane, serving_pem, serving=True, kubeconfig=kubelet_conf))
    assert renewal["spec"]["username"] == "system:node:worker-1"
    assert conditions(renewal)["Approved"]["reason"] == "AutoApproved"
    assert 3500 <= _lifetime(short) <= 3700  # expirationSeconds honoured (Vault backdates 30s)
    assert 86000 <= _lifetime(long) <= 86500  # clamped to the role's max TTL (leaf_ttl 24h)
    assert conditions(serving)["Approved"]["reason"] == "VaultK8sApproved"  # --approve-serving
    assert kube.issued_count() == before + 4

    chain = crypto.load_certs(issued_pem(serving))
    anchors = crypto.load_certs((plane.pki / "ca.crt").read_bytes())
    verifier = PolicyBuilder().store(Store(anchors)).build_server_verifier(x509.IPAddress(ipaddress.ip_address("127.0.1.1")))
    verifier.verify(chain[0], chain[1:])
    assert crypto.key_matches(chain[0], serving_key)
    leaf = plane.workdir / "serving.crt"
    leaf.write_bytes(issued_pem(serving))
    assert openssl_verify(plane.pki / "ca.crt", leaf).returncode == 0
    with pytest.raises(Exception):  # not a server certificate for another node's IP
        PolicyBuilder().store(Store(anchors)).build_server_verifier(
            x509.IPAddress(ipaddress.ip_address("127.0.1.2"))).verify(chain[0], chain[1:])


def _metric(port: int, name: str, reason: str) -> float:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(f'{name}{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_refusals_each_have_their_reason_and_nothing_is_signed(kube):
    plane = kube.plane
    kubelet_conf = plane.out / "worker-1" / "kubelet.conf"
    token = _bootstrap_token(plane)
    cases = []  # (name, condition, reason)

    def client_by_worker(pem, reason):  # kube-controller-manager does not approve these; an admin does
        name = post_csr(plane, pem, kubeconfig=kubelet_conf)
        plane.kubectl("certificate", "approve", name)
        cases.append((name, "Failed", reason))

    port = loopback_port()
    before = kube.issued_count()
    with kube.signer("--metrics-addr", f"127.0.0.1:{port}") as signer:
        client_by_worker(make_request("system:node:worker-2")[1], "RequesterMismatch")  # node A asks for B's CN
        client_by_worker(make_request("system:node:worker-1", org="system:masters")[1], "BadOrganization")
        for pem, reason in ((make_request("system:node:ghost")[1], "UnknownNode"),  # approved by the KCM
                            (make_request("system:node:worker-2", key_type="rsa-2048")[1], "UnsupportedKeyType")):
            cases.append((post_csr(plane, pem, token=token), "Failed", reason))
        foreign_ip = make_request("system:node:worker-1", dns=["worker-1"], ips=["127.0.0.1"])[1]  # cp-1's IP
        cases.append((post_csr(plane, foreign_ip, serving=True, kubeconfig=kubelet_conf), "Denied", "SANNotOwned"))
        client_usages = make_request("system:node:worker-1", dns=["worker-1"])[1]
        cases.append((post_csr(plane, client_usages, serving=True, usages=CLIENT_USAGES, kubeconfig=kubelet_conf),
                      "Denied", "BadUsages"))
        for name, kind, reason in cases:
            csr = wait_csr(plane, name, until=kind)
            assert conditions(csr)[kind]["reason"] == reason, (name, conditions(csr))
            assert conditions(csr)[kind]["message"]
        assert _metric(port, "vaultk8s_signer_failed_total", "BadOrganization") == 1
        assert _metric(port, "vaultk8s_signer_denied_total", "SANNotOwned") == 1
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        time.sleep(2)  # let any (wrong) late signing land before counting
        for name, _, _ in cases:
            assert not (get_csr(plane, name).get("status") or {}).get("certificate"), name
        assert signer.proc.poll() is None, signer.text()
    assert kube.issued_count() == before


def test_two_signers_sign_each_csr_exactly_once(kube):
    plane = kube.plane
    before = kube.issued_count()
    names = []
    with kube.signer("--identity", "replica-a") as a, kube.signer("--identity", "replica-b") as b:
        for i in range(6):
            node = f"worker-{1 + i % 2}"
            conf = plane.out / node / "kubelet.conf"
            if i % 3 == 2:
                pem = make_request(f"system:node:{node}", dns=[node], ips=[f"127.0.1.{1 + i % 2}"])[1]
                names.append(post_csr(plane, pem, serving=True, kubeconfig=conf))
            else:
                names.append(post_csr(plane, make_request(f"system:node:{node}")[1], kubeconfig=conf))
        for name in names:
            wait_csr(plane, name)
        time.sleep(2)
        assert kube.issued_count() == before + len(names)
        logs = a.text() + b.text()
        for name in names:
            assert logs.count(f"signed CSR {name} ") == 1, name

        # Fail-over: the leader stops (and releases the lease); the other signs what comes next.
        holder = plane.kubectl("-n", "kube-system", "get", "lease", "vaultk8s-signer",
                               "-o", "jsonpath={.spec.holderIdentity}").stdout.strip()
        leader, standby = (a, b) if holder == "replica-a" else (b, a)
        assert holder in ("replica-a", "replica-b")
        assert leader.stop() == 0
        late = post_csr(plane, make_request("system:node:worker-1")[1], kubeconfig=plane.out / "worker-1" / "kubelet.conf")
        wait_csr(plane, late)
        assert f"signed CSR {late} " in standby.text()
    assert kube.issued_count() == before + len(names) + 1


def test_a_backlog_is_signed_by_several_workers_each_csr_once(kube):
    """CSRs that piled up while no signer ran (a first start, an outage) are handled --workers at a
    time: every one signed, none twice."""
    plane = kube.plane
    nodes = [f"worker-{1 + i % 2}" for i in range(16)]
    names = [post_csr(plane, make_request(f"system:node:{node}")[1], kubeconfig=plane.out / node / "kubelet.conf")
             for node in nodes]
    for name in names:  # kube-controller-manager approves a node's own client CSRs
        wait_csr(plane, name, until="Approved")
    before = kube.issued_count()
    with kube.signer("--workers", "4") as signer:
        for name in names:
            wait_csr(plane, name)
        log = signer.text()
    assert kube.issued_count() == before + len(names)
    assert all(log.count(f"signed CSR {name} ") == 1 for name in names), log


def test_the_api_connection_is_reused_by_every_read_and_write(kube):
    """Each response is read to its end, so its connection goes back to the pool: a backlog costs one
    TLS handshake per worker thread, not one per call. Writes that left their response unread made
    every call a new handshake (16% of the signer's CPU in bench/signer_backlog.py)."""
    from vaultk8s.signer.kube import KubeGateway, connect

    plane = kube.plane
    names = [f"reuse-{secrets.token_hex(4)}" for _ in range(4)]
    for name in names:  # a signer name no controller acts on: only this test writes them
        spec = {"request": base64.b64encode(make_request("reuse")[1].encode()).decode(),
                "signerName": "example.com/reuse", "usages": ["client auth"]}
        doc = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"name": name},
               "spec": spec}
        plane.kubectl("create", "-f", "-", input=json.dumps(doc))
    gateway = KubeGateway(connect(plane.super_admin_kubeconfig))
    now = datetime.now(timezone.utc)
    for name in names:
        gateway.add_condition(gateway.read_csr(name), "Denied", "Test", "reuse", now)
        gateway.add_condition(gateway.read_csr(name), "Failed", "Test", "reuse", now)
    lease = f"reuse-{secrets.token_hex(3)}"
    gateway.create_lease("kube-system", lease, {"holderIdentity": "a", "leaseDurationSeconds": 15})
    for holder in ("b", "c"):
        gateway.replace_lease(gateway.read_lease("kube-system", lease), {"holderIdentity": holder, "leaseDurationSeconds": 15})
    gateway.list_csrs()
    pools = gateway.api_client.rest_client.pool_manager.pools
    assert [pools[key].num_connections for key in pools.keys()] == [1]  # 20 calls, one TLS connection
    assert all("Failed" in conditions(get_csr(plane, name)) for name in names)


def test_vault_down_is_retried_with_backoff_never_failed(kube):
    plane = kube.plane
    target = int(kube.env["VAULT_ADDR"].rsplit(":", 1)[1])
    proxy = TcpProxy(target)  # not started: connections to Vault are refused
    port = loopback_port()
    before = kube.issued_count()
    with kube.signer("--metrics-addr", f"127.0.0.1:{port}", vault_addr=f"https://127.0.0.1:{proxy.port}") as signer:
        name = post_csr(plane, make_request("system:node:worker-1")[1], kubeconfig=plane.out / "worker-1" / "kubelet.conf")
        deadline = time.monotonic() + 90
        while metric_total(port, 'vaultk8s_signer_transient_errors_total{component="vault"}') < 2:
            assert time.monotonic() < deadline, signer.text()
            time.sleep(1)
        csr = get_csr(plane, name)
        assert "Failed" not in conditions(csr) and not (csr.get("status") or {}).get("certificate")
        assert "retrying in" in signer.text() and "cannot reach Vault" in signer.text()
        proxy.start()  # Vault is back
        try:
            wait_csr(plane, name, timeout=120)
        finally:
            proxy.stop()
        assert "Failed" not in conditions(get_csr(plane, name))
        # its Vault identity, exported: the AppRole secret_id lapses after policy.secret_id_ttl (default 24h)
        expiry = metric_total(port, 'vaultk8s_signer_credential_expiry_timestamp_seconds{credential="secret_id"}')
        assert time.time() + 23 * 3600 < expiry < time.time() + 24 * 3600 + 60
        assert metric_total(port, 'vaultk8s_signer_last_login_timestamp_seconds{method="approle"}') > 0
        assert metric_total(port, 'vaultk8s_signer_login_failures_total{method="approle",reason="unavailable"}') >= 1
    assert kube.issued_count() == before + 1


def test_an_idle_signer_replaces_its_secret_id_before_it_lapses(kube, tmp_path):
    """The shipped settings (policy.secret_id_ttl 24h), but a first secret_id that lives 24 s (root may
    shorten one): the real process replaces it at 2/3 with no CSR in sight, destroys it, and signs
    after its end with the new one, which gets the role's 24h."""
    from vaultk8s.plan import naming

    role = f"auth/{naming.approle_mount(kube.config)}/role/{naming.CSR_SIGNER_APPROLE_ROLE}"
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    for name in ("role_id", "approle_mount"):
        (creds / name).write_bytes((kube.credentials / name).read_bytes())
    made = call(kube.env, kube.env["VAULT_TOKEN"], "POST", f"{role}/secret-id", {"ttl": "24s"})
    first = made.json()["data"]["secret_id"]
    (creds / "secret_id").write_text(first)
    (creds / "secret_id").chmod(0o600)
    port, started = loopback_port(), time.monotonic()
    with kube.signer("--metrics-addr", f"127.0.0.1:{port}", credentials=creds) as signer:
        while (creds / "secret_id").read_text() == first:
            assert time.monotonic() - started < 40, signer.text()
            time.sleep(0.5)
        time.sleep(max(0.0, started + 26 - time.monotonic()))  # past the first one's end
        name = post_csr(kube.plane, make_request("system:node:worker-2")[1],
                        kubeconfig=kube.plane.out / "worker-2" / "kubelet.conf")
        assert "Failed" not in conditions(wait_csr(kube.plane, name, timeout=60))
        expiry = metric_total(port, 'vaultk8s_signer_credential_expiry_timestamp_seconds{credential="secret_id"}')
        assert time.time() + 23 * 3600 < expiry < time.time() + 24 * 3600 + 60
        # Vault's own TLS, read at each login as the agents do: the dev server's listener certificate
        served = x509.load_pem_x509_certificate(Path(kube.env["VAULT_CACERT"]).with_name("server.pem").read_bytes())
        tls = metric_total(port, 'vaultk8s_vault_tls_expiry_timestamp_seconds{kind="vault-tls",'
                                 f'name="{kube.env["VAULT_ADDR"]} serving certificate"}}')
        assert tls == served.not_valid_after_utc.timestamp()
    looked = call(kube.env, kube.env["VAULT_TOKEN"], "POST", f"{role}/secret-id/lookup", {"secret_id": first})
    assert not (looked.status_code == 200 and (looked.json() or {}).get("data"))  # destroyed
    assert "replaced the AppRole secret_id" in signer.text()
    assert first not in signer.text() and (creds / "secret_id").read_text() not in signer.text()


@needs_softhsm
def test_hsm_mode_status_certificate_carries_the_intermediate(openbao, tmp_path):
    """HSM mode: ca.crt is the root only, so the kubelet must present leaf + intermediate; it does."""
    token = init_dev_token(tmp_path / "hsm")
    env = openbao.as_environ()
    prefix = f"h{secrets.token_hex(4)}/"
    with running_control_plane(tmp_path, env, prefix, workers=1, bootstrap_env=token_environ(token),
                               hsm=hsm_section("ec-p256")) as plane:
        plane.start_controller_manager()
        plane.kubectl("apply", "-f", str(DEPLOY / "kubelet-bootstrap-rbac.yaml"))
        key, pem = make_request("system:node:worker-1")
        signer = SignerProcess(plane.workdir, env, "--config", str(plane.cluster_file),
                               "--kubeconfig", str(plane.super_admin_kubeconfig))  # root token: Vault side is tested above
        with signer:
            csr = wait_csr(plane, post_csr(plane, pem, kubeconfig=plane.out / "worker-1" / "kubelet.conf"))
        chain = crypto.load_certs(issued_pem(csr))
        assert len(chain) == 2 and not crypto.is_self_signed(chain[1])
        assert len(crypto.load_certs((plane.pki / "ca.crt").read_bytes())) == 1
        conf = _cert_kubeconfig(plane, issued_pem(csr), key, plane.workdir / "hsm-node.conf")
        _, probe = make_request("system:node:worker-1")
        assert get_csr(plane, post_csr(plane, probe, kubeconfig=conf))["spec"]["username"] == "system:node:worker-1"
