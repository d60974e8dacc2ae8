"""The signer's JWT mount in Vault, without Kubernetes: `policy apply` before bootstrap, the
operator's bootstrap writes the keys, drift of the role and the keys shows in `policy diff`, and the
operator's grant writes nothing but the keys (issuer pinned)."""

from __future__ import annotations

import pytest

from vaultk8s.plan import machine_auth, naming

from tests.helpers.policy import applied_cluster, call, cli, make_token
from tests.helpers.redacted import RedactedEnv, Secret

pytestmark = pytest.mark.integration


def _jwt_config(env, config) -> dict:
    return call(env, Secret(env["VAULT_TOKEN"]), "GET", f"auth/{naming.jwt_mount(config)}/config").json()["data"]


def test_jwt_mount_follows_the_key_set_and_drift_shows(openbao, tmp_path, mount_prefix):
    env = RedactedEnv(openbao.as_environ())
    path, config, operator = applied_cluster(env, tmp_path, mount_prefix)  # apply, then the operator's bootstrap
    operator, root = Secret(operator), Secret(env["VAULT_TOKEN"])
    have = _jwt_config(env, config)
    pub = (tmp_path / "out" / "cp-1" / "pki" / "sa.pub").read_text()
    assert [k.strip() for k in have["jwt_validation_pubkeys"]] == [pub.strip()]
    assert have["bound_issuer"] == "https://kubernetes.default.svc.cluster.local"
    again = cli(env, "policy", "apply", "-c", str(path))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
    auditor = make_token(env, [naming.policy_name(config, "auditor")])
    clean = cli(env, "policy", "diff", "-c", str(path), token=auditor)
    assert clean.returncode == 0 and "not compared" in clean.stdout, clean.stdout  # may not read the key set

    mount = naming.jwt_mount(config)
    role = f"auth/{mount}/role/{naming.CSR_SIGNER_JWT_ROLE}"
    tampered = {**machine_auth.signer_jwt_role_params(config), "bound_subject": "system:serviceaccount:default:x"}
    written = call(env, root, "POST", role, tampered)
    assert written.ok, written.text
    drift = cli(env, "policy", "diff", "-c", str(path), token=auditor)
    assert drift.returncode == 1 and "write-jwt-role" in drift.stdout and "bound_subject" in drift.stdout

    # the operator may write the keys with the cluster's issuer, nothing else
    keys = {"jwt_validation_pubkeys": [pub], "bound_issuer": "https://kubernetes.default.svc.cluster.local"}
    assert call(env, operator, "POST", f"auth/{mount}/config", keys).ok
    for bad in ({**keys, "bound_issuer": "https://evil.example"}, {**keys, "jwks_url": "https://evil.example/jwks"},
                {"jwt_validation_pubkeys": [pub], "bound_issuer": keys["bound_issuer"], "default_role": "x"}):
        assert call(env, operator, "POST", f"auth/{mount}/config", bad).status_code == 403
    assert call(env, operator, "POST", role, {"bound_subject": "x"}).status_code == 403

    blanked = {"jwt_validation_pubkeys": [pub]}  # a partial write resets bound_issuer (OpenBao 2.7.2)
    assert call(env, root, "POST", f"auth/{mount}/config", blanked).ok
    assert _jwt_config(env, config)["bound_issuer"] == ""
    drift = cli(env, "policy", "diff", "-c", str(path))
    assert drift.returncode == 1 and "write-jwt-config" in drift.stdout and "bound_issuer" in drift.stdout
    fixed = cli(env, "bootstrap", "-c", str(path), "-o", str(tmp_path / "out"), token=operator)
    assert fixed.returncode == 0 and "write-jwt-config" in fixed.stdout, fixed.stderr
    applied = cli(env, "policy", "apply", "-c", str(path))
    assert applied.returncode == 0 and "write-jwt-role" in applied.stdout
    assert cli(env, "policy", "diff", "-c", str(path)).returncode == 0
    assert _jwt_config(env, config)["bound_issuer"] == keys["bound_issuer"]
