"""The csr-signer Vault credential: `signer-credentials` files log in, and the token signs with the
kubelet roles of this cluster's nodes and nothing else, probed against every role of the three mounts."""

from __future__ import annotations

import os
import stat

import pytest

from vaultk8s import catalog, crypto
from vaultk8s.plan import machine_auth

from tests.helpers.policy import applied_cluster, call, cli

pytestmark = pytest.mark.integration


def _login(env, out) -> str:
    mount = (out / "approle_mount").read_text()
    resp = call(env, "", "POST", f"auth/{mount}/login",  # a plain AppRole login, no vaultk8s code
                {"role_id": (out / "role_id").read_text(), "secret_id": (out / "secret_id").read_text()})
    assert resp.status_code == 200, resp.text
    return resp.json()["auth"]["client_token"]


def test_signer_credential_signs_only_kubelet_roles(vault_env, tmp_path, mount_prefix):
    path, config, operator = applied_cluster(vault_env, tmp_path, mount_prefix)
    out = tmp_path / "signer-creds"
    made = cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(out), token=operator)
    assert made.returncode == 0, made.stderr
    assert all(stat.S_IMODE(os.stat(out / n).st_mode) == 0o600 for n in ("role_id", "secret_id", "approle_mount"))
    assert (out / "secret_id").read_text() not in made.stdout + made.stderr
    token = _login(vault_env, out)
    looked = call(vault_env, token, "GET", "auth/token/lookup-self").json()["data"]
    assert sorted(looked["policies"]) == machine_auth.signer_policies(config)

    csr = crypto.build_csr(crypto.generate_key("ec-p256"), "system:node:worker-1", "system:nodes", (), ())
    allowed = {f"kubelet-{kind}-{n.name}" for kind in ("client", "serving") for n in config.nodes}
    probed = 0
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        roles = call(vault_env, vault_env["VAULT_TOKEN"], "LIST", f"{mount}/roles").json()["data"]["keys"]
        for role in roles:
            for op in ("sign", "issue", "sign-verbatim"):
                resp = call(vault_env, token, "POST", f"{mount}/{op}/{role}", {"csr": csr, "common_name": "x"})
                if op == "sign" and role in allowed:
                    # 200 for its own node's role, 400 for another node's CN: the policy let it through
                    assert resp.status_code in (200, 400), (mount, role, resp.text)
                else:
                    assert resp.status_code == 403, (mount, op, role, resp.status_code)
                probed += 1
        for path_ in ("sign-verbatim", "sign-intermediate", "root/generate/internal", "roles/kube-proxy"):
            assert call(vault_env, token, "POST", f"{mount}/{path_}", {"csr": csr}).status_code == 403
    assert probed >= 3 * len(catalog.CERTS)
    good = call(vault_env, token, "POST", f"{config.mount('kubernetes-ca')}/sign/kubelet-client-worker-1",
                {"csr": csr, "ttl": "1h"})
    assert good.status_code == 200, good.text


def test_signer_credentials_need_policy_apply(vault_env, tmp_path, mount_prefix):
    from tests.helpers.policy import write_cluster

    path, _ = write_cluster(tmp_path, mount_prefix)
    refused = cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(tmp_path / "c"))
    assert refused.returncode != 0 and "policy apply" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c" / "role_id").exists()
