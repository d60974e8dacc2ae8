"""The CSR signer's own identity: its projected ServiceAccount token through Vault's JWT auth.

Real kube-apiserver (VAULTK8S_KUBE_BIN) + kube-controller-manager + etcd + OpenBao. Tokens come
from the API server's TokenRequest (`kubectl create token`); Vault validates them offline against
the service-account keys vaultk8s keeps, with `token_ttl` 1m so the signer must log in again. The
tests run in order: the last one rotates the service-account keys and restarts kube-apiserver.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from vaultk8s.config import ClusterConfig, load_config
from vaultk8s.plan import machine_auth, naming

from tests.helpers.cluster import REPO, run_cli
from tests.helpers.csr import SignerProcess, make_request, metric_total, post_csr, wait_csr
from tests.helpers.kube import KubeControlPlane, loopback_port, running_control_plane, token_kubeconfig
from tests.helpers.policy import call, make_token
from tests.helpers.redacted import RedactedEnv, Secret

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy" / "signer"
AUDIENCE = "vaultk8s"


@dataclass
class Kube:
    plane: KubeControlPlane
    env: RedactedEnv
    config: ClusterConfig
    kubeconfig: Path  # the signer's ServiceAccount, for the Kubernetes API

    def token(self, account: str = "vaultk8s-signer", audience: str = AUDIENCE) -> str:
        """A token from the API server's TokenRequest API, 10 minutes (the projected volume's lifetime)."""
        return Secret(self.plane.kubectl("-n", "kube-system", "create", "token", account, f"--audience={audience}",
                                         "--duration=10m").stdout.strip())

    def login(self, jwt: str) -> requests.Response:
        return call(self.env, "", "POST", f"auth/{naming.jwt_mount(self.config)}/login",
                    {"role": naming.CSR_SIGNER_JWT_ROLE, "jwt": jwt})

    def jwt_keys(self) -> int:
        path = f"auth/{naming.jwt_mount(self.config)}/config"
        return len(call(self.env, self.env["VAULT_TOKEN"], "GET", path).json()["data"]["jwt_validation_pubkeys"])


@pytest.fixture(scope="module")
def kube(openbao, tmp_path_factory) -> Kube:
    tmp = tmp_path_factory.mktemp("signer-jwt")
    env = RedactedEnv(openbao.as_environ())
    prefix = f"j{secrets.token_hex(4)}/"
    with running_control_plane(tmp, env, prefix, workers=1,
                               policy={"token_ttl": "1m", "token_max_ttl": "2m", "bind_cidrs": False}) as plane:
        plane.start_controller_manager()
        plane.kubectl("apply", "-f", str(DEPLOY))  # the ServiceAccount and its RBAC; no Secret any more
        plane.kubectl("-n", "kube-system", "create", "serviceaccount", "someone-else")
        run_cli("policy", "apply", "--config", str(plane.cluster_file), env=env, check=True)
        api = plane.kubectl("-n", "kube-system", "create", "token", "vaultk8s-signer", "--duration=2h").stdout.strip()
        yield Kube(plane, env, load_config(plane.cluster_file), token_kubeconfig(plane, api, tmp / "signer.conf"))


def test_the_projected_token_logs_in_and_nothing_else_does(kube):
    resp = kube.login(kube.token())
    assert resp.status_code == 200, resp.text
    auth = resp.json()["auth"]
    assert sorted(auth["token_policies"]) == machine_auth.signer_policies(kube.config)  # no default policy
    assert auth["lease_duration"] == 60
    assert auth["metadata"]["role"] == naming.CSR_SIGNER_JWT_ROLE
    for jwt, why in ((kube.token(audience="https://kubernetes.default.svc.cluster.local"), "audience"),
                     (kube.token(audience="other"), "audience"),
                     (kube.token(account="someone-else"), "subject")):
        refused = kube.login(jwt)
        assert refused.status_code in (400, 403), (why, refused.status_code)
        assert jwt not in refused.text
    assert run_cli("policy", "diff", "--config", str(kube.plane.cluster_file), env=kube.env).returncode == 0


def test_the_signer_signs_with_its_token_past_several_vault_token_lifetimes(kube, tmp_path):
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kube.token())
    port = loopback_port()
    env = RedactedEnv({k: v for k, v in kube.env.items() if k != "VAULT_TOKEN"})  # no Vault secret at all
    kubelet_conf = kube.plane.out / "worker-1" / "kubelet.conf"
    started = time.monotonic()
    with SignerProcess(kube.plane.workdir, env, "--config", str(kube.plane.cluster_file), "--kubeconfig",
                       str(kube.kubeconfig), "--jwt-file", str(jwt_file),
                       "--metrics-addr", f"127.0.0.1:{port}") as signer:
        signed = []
        for round_ in range(5):  # 0, 50, 100, 150, 200 s: three 1-minute Vault tokens pass
            if round_ == 2:
                jwt_file.write_text(kube.token())  # the kubelet rewrites the projected token
            _, pem = make_request("system:node:worker-1")
            csr = wait_csr(kube.plane, post_csr(kube.plane, pem, kubeconfig=kubelet_conf))
            signed.append(csr["metadata"]["name"])
            assert signer.proc.poll() is None, signer.text()[-2000:]
            if round_ < 4:
                time.sleep(max(0.0, started + 50 * (round_ + 1) - time.monotonic()))
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        log = signer.text()
    elapsed = time.monotonic() - started
    assert len(signed) == 5 and elapsed > 180
    last_login = float(re.search(r'vaultk8s_signer_last_login_timestamp_seconds\{method="jwt"\} (\S+)', metrics)[1])
    assert time.time() - last_login < 60  # it logged in again, not once at the start
    assert 'vaultk8s_signer_credential_expiry_timestamp_seconds{credential="jwt"}' in metrics
    failures = [line for line in metrics.splitlines() if line.startswith("vaultk8s_signer_login_failures_total{")]
    assert failures and all(line.endswith(" 0.0") for line in failures), failures  # there from the start, all 0
    assert "eyJ" not in log and "denied" not in log.lower(), log[-2000:]


def test_a_refused_token_is_counted_and_retried_never_fails_the_csr(kube, tmp_path):
    jwt_file = tmp_path / "token"
    jwt_file.write_text(kube.token(audience="not-vaultk8s"))
    port = loopback_port()
    env = RedactedEnv({k: v for k, v in kube.env.items() if k != "VAULT_TOKEN"})
    kubelet_conf = kube.plane.out / "worker-1" / "kubelet.conf"
    with SignerProcess(kube.plane.workdir, env, "--config", str(kube.plane.cluster_file), "--kubeconfig",
                       str(kube.kubeconfig), "--jwt-file", str(jwt_file),
                       "--metrics-addr", f"127.0.0.1:{port}") as signer:
        name = post_csr(kube.plane, make_request("system:node:worker-1")[1], kubeconfig=kubelet_conf)
        deadline = time.monotonic() + 60
        rejected = 'vaultk8s_signer_login_failures_total{method="jwt",reason="rejected"}'
        while metric_total(port, rejected) < 1:
            assert time.monotonic() < deadline and signer.proc.poll() is None, signer.text()[-2000:]
            time.sleep(0.5)
        csr = json.loads(kube.plane.kubectl("get", "csr", name, "-o", "json").stdout)
        assert "Failed" not in {c["type"] for c in (csr.get("status") or {}).get("conditions") or []}
        jwt_file.write_text(kube.token())  # the next retry reads the file again
        wait_csr(kube.plane, name, timeout=90)
        log = signer.text()
    assert "login was refused" in log and "eyJ" not in log


def test_sa_rotation_moves_the_jwt_keys_with_the_api_server(kube):
    plane, path = kube.plane, str(kube.plane.cluster_file)
    operator = Secret(make_token(kube.env, [naming.policy_name(kube.config, "operator")]))
    old = kube.token()
    assert kube.jwt_keys() == 1

    def rotate(phase: str, *extra: str) -> None:
        done = run_cli("sa", "rotate", "--config", path, "--out", str(plane.out), "--phase", phase, *extra,
                       env=RedactedEnv(kube.env, VAULT_TOKEN=str(operator)))  # the operator's limited grant suffices
        assert done.returncode == 0, done.stderr
        plane.restart_apiserver()
        assert run_cli("policy", "diff", "--config", path, env=kube.env).returncode == 0

    rotate("stage")
    assert kube.jwt_keys() == 2 and kube.login(old).status_code == 200
    rotate("promote")
    new = kube.token()
    assert kube.jwt_keys() == 2
    assert kube.login(new).status_code == 200 and kube.login(old).status_code == 200
    rotate("retire", "--force")
    assert kube.jwt_keys() == 1
    assert kube.login(new).status_code == 200
    refused = kube.login(old)  # signed by the retired key: kube-apiserver no longer accepts it either
    assert refused.status_code in (400, 403) and old not in refused.text
