"""The out-of-cluster signer replaces its own AppRole secret_id at 2/3 of its life, on a real OpenBao.

With `policy.secret_id_ttl` scaled down to 15 s, the signer's login keeper (the loop `vaultk8s signer`
runs beside the signer loop) is run for four lifetimes with no CSR at all, as a standby or a quiet
leader would be: every secret_id it held is destroyed once replaced, the file stays 0600, and a
sign at the end works with what is left. A credentials directory that cannot take the new file
keeps the old one and leaves no orphan in Vault.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import pytest

from vaultk8s.plan import naming
from vaultk8s.signer.controller import SignerSettings, VaultSigner, run_login_keeper
from vaultk8s.signer.metrics import SignerMetrics
from vaultk8s.vault.gateway import VaultGateway

from tests.helpers.csr import make_request
from tests.helpers.policy import CLUSTER, applied_cluster, call, cli

pytestmark = pytest.mark.integration

SECRET_ID_TTL = 15  # seconds: replaced at 10 s


@pytest.fixture
def signer_dir(vault_env, tmp_path, mount_prefix, monkeypatch):
    policy = {**CLUSTER["policy"], "secret_id_ttl": f"{SECRET_ID_TTL}s", "token_ttl": "1m"}
    path, config, operator = applied_cluster(vault_env, tmp_path, mount_prefix, policy=policy)
    out = tmp_path / "signer-creds"
    made = cli(vault_env, "signer-credentials", "-c", str(path), "--out", str(out), token=operator)
    assert made.returncode == 0, made.stderr
    for name, value in vault_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("VAULT_TOKEN")  # the signer holds only its AppRole files
    return config, out


def _accessors(env, config) -> list[str]:
    resp = call(env, env["VAULT_TOKEN"], "LIST",
                f"auth/{naming.approle_mount(config)}/role/{naming.CSR_SIGNER_APPROLE_ROLE}/secret-id")
    return resp.json()["data"]["keys"] if resp.status_code == 200 else []


def _known(env, config, secret_id: str) -> bool:
    """Vault still holds this secret_id (a root lookup: failed logins would lock the role_id out)."""
    resp = call(env, env["VAULT_TOKEN"], "POST",
                f"auth/{naming.approle_mount(config)}/role/{naming.CSR_SIGNER_APPROLE_ROLE}/secret-id/lookup",
                {"secret_id": secret_id})
    return resp.status_code == 200 and bool((resp.json() or {}).get("data"))


def _logs_in(env, config, out, secret_id: str) -> bool:
    resp = call(env, "", "POST", f"auth/{naming.approle_mount(config)}/login",
                {"role_id": (out / "role_id").read_text(), "secret_id": secret_id})
    if resp.status_code == 200:
        call(env, resp.json()["auth"]["client_token"], "POST", "auth/token/revoke-self")
    return resp.status_code == 200


def _keeper(config, out):
    metrics = SignerMetrics()
    vault = VaultSigner(VaultGateway.from_env, SignerSettings(config=config, credentials_dir=out), metrics=metrics)
    stop = threading.Event()
    thread = threading.Thread(target=run_login_keeper, args=(vault, stop), daemon=True)
    return vault, metrics, stop, thread


def test_a_quiet_signer_replaces_its_secret_id_for_four_lifetimes(vault_env, signer_dir, caplog):
    config, out = signer_dir
    caplog.set_level(logging.INFO, "vaultk8s.signer")
    vault, metrics, stop, thread = _keeper(config, out)
    held = [(out / "secret_id").read_text()]
    thread.start()
    try:
        deadline = time.monotonic() + 4 * SECRET_ID_TTL + 5
        while time.monotonic() < deadline:
            current = (out / "secret_id").read_text()
            if current != held[-1]:
                held.append(current)
            time.sleep(0.5)
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    if (out / "secret_id").read_text() != held[-1]:  # replaced once more before it saw the stop
        held.append((out / "secret_id").read_text())
    assert len(held) >= 5, f"{len(held) - 1} replacement(s) in four lifetimes"  # one per 10 s
    assert stat.S_IMODE(os.stat(out / "secret_id").st_mode) == 0o600
    assert not any(_known(vault_env, config, s) for s in held[:-1])  # destroyed, not left to lapse
    assert _logs_in(vault_env, config, out, held[-1])
    assert len(_accessors(vault_env, config)) == 1
    expiry = metrics.credential_expiry.labels("secret_id")._value.get()
    issued = metrics.credential_issued.labels("secret_id")._value.get()
    assert expiry - issued == pytest.approx(SECRET_ID_TTL, abs=1) and expiry > time.time()
    # after all that idle time a CSR still signs, with the credential that is left
    csr = make_request("system:node:worker-1")[1]
    assert b"BEGIN CERTIFICATE" in vault.sign(config.mount("kubernetes-ca"), "kubelet-client-worker-1", csr, 600)
    vault.close()
    text = caplog.text
    assert text.count("replaced the AppRole secret_id") >= 4
    assert not [s for s in held if s.strip() in text]


def test_a_failed_write_keeps_the_old_secret_id_and_destroys_the_new(vault_env, signer_dir, caplog, monkeypatch):
    """The credentials directory cannot take the new file (root ignores modes, so the write is made to fail)."""
    from vaultk8s.errors import StoreError
    from vaultk8s.ops import signer_auth

    config, out = signer_dir
    caplog.set_level(logging.INFO, "vaultk8s.signer")

    def refuse(path, content):
        raise StoreError(f"cannot write {path}: Read-only file system")
    monkeypatch.setattr(signer_auth, "write_file", refuse)
    vault, metrics, stop, thread = _keeper(config, out)
    first = (out / "secret_id").read_text()
    thread.start()
    try:
        time.sleep(SECRET_ID_TTL * 2 / 3 + 4)  # past the replacement point
    finally:
        stop.set()
        thread.join(timeout=30)
    assert (out / "secret_id").read_text() == first
    assert _logs_in(vault_env, config, out, first)
    assert len(_accessors(vault_env, config)) == 1  # the new one was destroyed again
    assert "could not replace the AppRole secret_id" in caplog.text and "Read-only file system" in caplog.text
    assert first.strip() not in caplog.text
    vault.close()
