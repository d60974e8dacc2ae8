"""`vaultk8s status` against a real OpenBao: after `policy apply` + an operator's bootstrap, node and
signer credentials and a CA rotation stage, every lifetime is listed soonest first with the
Contract's JSON shape, and the exit code follows --warn."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

from vaultk8s.config import ClusterConfig
from vaultk8s.plan import naming

from tests.helpers.policy import applied_cluster, cli, make_token
from tests.helpers.redacted import RedactedEnv, Secret

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    env: RedactedEnv
    path: Path
    config: ClusterConfig
    operator: Secret
    out: Path


@pytest.fixture
def cluster(openbao, tmp_path, mount_prefix) -> Cluster:
    vault_env = RedactedEnv(openbao.as_environ())
    path, config, operator = applied_cluster(vault_env, tmp_path, mount_prefix)
    operator, out = Secret(operator), tmp_path / "out"
    for args in (("node", "credentials", "-c", str(path), "--node", "worker-1", "--out", str(tmp_path / "w1"),
                  "--token"),
                 ("signer-credentials", "-c", str(path), "--out", str(tmp_path / "signer")),
                 ("ca", "rotate", "-c", str(path), "--out", str(out), "--ca", "kubernetes-ca", "--phase", "stage")):
        done = cli(vault_env, *args, token=operator)
        assert done.returncode == 0, done.stderr
    return Cluster(vault_env, path, config, operator, out)


def _rfc3339(pem_file: Path) -> str:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(env, path, out, warn, token=None):
    done = cli(env, "status", "-c", str(path), "--out", str(out), "--warn", warn, "--output", "json", token=token)
    return done, json.loads(done.stdout)


def test_status_lists_every_lifetime_soonest_first(cluster):
    vault_env, path, config, operator, out = cluster.env, cluster.path, cluster.config, cluster.operator, cluster.out
    done, report = _status(vault_env, path, out, "1s", token=operator)
    assert done.returncode == 0, done.stderr
    items = report["items"]
    assert items and all({"kind", "name", "not_after", "renewed_by", "due", "detail"} <= set(i) for i in items)
    ends = [datetime.fromisoformat(i["not_after"].replace("Z", "+00:00")) for i in items if i["not_after"]]
    assert ends == sorted(ends)
    kinds = {i["kind"] for i in items}
    assert {"leaf", "ca-root", "ca-cross-signed", "sa-key", "enrolment", "signer-credential"} <= kinds
    roots = [i for i in items if i["kind"] == "ca-root" and i["name"].startswith(config.mount("kubernetes-ca"))]
    assert len(roots) == 2  # both generations: the staged root beside the old one
    leaves = {i["name"] for i in items if i["kind"] == "leaf"}
    assert "worker-1/pki/kubelet-client.crt" in leaves and "cp-1/pki/apiserver.crt" in leaves
    signer = [i for i in items if i["kind"] == "signer-credential"]
    assert len(signer) == 1 and naming.CSR_SIGNER_APPROLE_ROLE in signer[0]["name"]
    assert signer[0]["renewal"] == "automatic"  # the signer replaces it at 2/3 of its life
    assert report["due"] == [] and not any(i["due"] for i in items)
    # Vault's own TLS: the certificate the listener serves (the dev server's server.pem) and VAULT_CACERT's
    cacert = Path(vault_env["VAULT_CACERT"])
    tls = {i["kind"]: i for i in items if i["kind"] in ("vault-tls", "vault-ca")}
    assert tls["vault-tls"]["name"] == f"{vault_env['VAULT_ADDR']} serving certificate"
    assert tls["vault-tls"]["not_after"] == _rfc3339(cacert.with_name("server.pem"))
    assert tls["vault-ca"]["name"] == f"VAULT_CACERT {cacert}" and tls["vault-ca"]["not_after"] == _rfc3339(cacert)
    assert {i["renewal"] for i in tls.values()} == {"person"}
    # the operator may not list tokens: said, not failed
    assert any("auth/token/accessors" in n for n in report["notes"])
    text = done.stdout + done.stderr
    secrets = [(path.parent / "w1" / "secret_id").read_text(), (path.parent / "signer" / "secret_id").read_text(),
               (path.parent / "w1" / "token").read_text(), str(operator)]
    assert not [i for i, s in enumerate(secrets) if s.strip() in text]  # indexes only, never the values


def test_status_exit_code_follows_warn_and_names_what_is_due(cluster):
    vault_env, path, operator, out = cluster.env, cluster.path, cluster.operator, cluster.out
    done, report = _status(vault_env, path, out, "87600h", token=operator)
    assert done.returncode == 1
    due = set(report["due"])
    kinds = {i["kind"] for i in report["items"] if i["due"]}
    assert {"ca-root", "sa-key"} <= kinds
    assert not {"enrolment", "leaf", "signer-credential"} & kinds  # they lapse or renew on their own
    assert all(name in done.stderr for name in due)
    # root may list tokens: the node's plain token is listed, never due
    done, report = _status(vault_env, path, out, "1s")
    assert done.returncode == 0, done.stderr
    tokens = [i for i in report["items"] if i["kind"] == "token"]
    assert tokens and all(not t["due"] for t in tokens)
    assert not any("auth/token/accessors" in n for n in report["notes"])
    # an auditor sees the CAs (PKI serves them without a token) and is told what it may not read
    auditor = Secret(make_token(vault_env, [naming.policy_name(cluster.config, "auditor")]))
    done, report = _status(vault_env, path, out, "1s", token=auditor)
    assert done.returncode == 0, done.stderr
    assert {"leaf", "ca-root", "ca-cross-signed", "vault-tls", "vault-ca"} == {i["kind"] for i in report["items"]}
    assert [n.split(":")[0] for n in report["notes"]] == ["service-account keys", "secret_ids", "tokens"]
    # the defaults (--warn 30d): nothing is due on the day of bootstrap. The signer's AppRole secret_id
    # lapses within 30 days, but the signer replaces it itself, so it is due only in its last third
    text = cli(vault_env, "status", "-c", str(path), "--out", str(out), token=operator)
    assert text.returncode == 0 and "ca-cross-signed" in text.stdout and "KIND" in text.stdout
    assert "csr-signer secret_id" in text.stdout and "due:" not in text.stderr
