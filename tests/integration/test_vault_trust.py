"""The Vault client's TLS trust on the real OpenBao: the server's certificate is verified against
VAULT_CACERT, or a hashed directory in REQUESTS_CA_BUNDLE, and VAULT_SKIP_VERIFY turns it off."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from vaultk8s.errors import VaultError
from vaultk8s.vault.gateway import VaultGateway
from tests.helpers.kubeadm_cluster import cert_pem, new_ca


def _other_ca_pem() -> bytes:
    return cert_pem(new_ca("not-vaults-ca", kind="ec")[0])


def _gateway(openbao, **env) -> VaultGateway:
    return VaultGateway.from_env({"VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.token, **env})


def test_a_server_certificate_from_another_ca_is_refused(openbao, tmp_path):
    other = tmp_path / "other-ca.pem"
    other.write_bytes(_other_ca_pem())
    with pytest.raises(VaultError, match="TLS verification of .* failed: set VAULT_CACERT"):
        _gateway(openbao, VAULT_CACERT=str(other)).read_policy("default")


def test_a_hashed_ca_directory_is_trusted_and_a_wrong_one_is_not(openbao, tmp_path, monkeypatch):
    """REQUESTS_CA_BUNDLE may name a directory (requests' rule): it becomes urllib3's ca_cert_dir."""
    right, wrong = tmp_path / "right", tmp_path / "wrong"
    right.mkdir()
    wrong.mkdir()
    shutil.copy(openbao.cacert, right / "ca.pem")
    (wrong / "ca.pem").write_bytes(_other_ca_pem())
    for directory in (right, wrong):
        subprocess.run(["openssl", "rehash", str(directory)], check=True, capture_output=True)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(right))
    assert _gateway(openbao).read_policy("default") is not None
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(wrong))
    with pytest.raises(VaultError, match="TLS verification"):
        _gateway(openbao).read_policy("default")


def test_skip_verify_still_reaches_the_server(openbao):
    assert _gateway(openbao, VAULT_SKIP_VERIFY="true").read_policy("default") is not None
