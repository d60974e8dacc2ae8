"""The Vault session reads the proxy and CA-bundle variables once, with requests' own rules."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaultk8s.vault.gateway import _RETRY, settings_from_env
from vaultk8s.vault.session import vault_session

ADDR = "https://vault.example:8200"


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                 "ALL_PROXY", "all_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _self_signed_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _settings(**extra):
    return settings_from_env({"VAULT_ADDR": ADDR, "VAULT_TOKEN": "t", **extra})


def _session(settings):
    return vault_session(settings.addr, settings.cacert, settings.skip_verify, _RETRY, 4)


def test_no_environment_lookups_per_call(clean_env):
    session = _session(_settings())
    assert session.trust_env is False
    assert session.proxies == {}
    assert session.verify is True


def test_a_proxy_variable_is_used(clean_env):
    clean_env.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert _session(_settings()).proxies["https"] == "http://proxy.example:3128"


def test_no_proxy_for_vaults_host_wins(clean_env):
    clean_env.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    clean_env.setenv("NO_PROXY", "vault.example")
    assert _session(_settings()).proxies == {}


def test_ca_bundle_variable_unless_vault_cacert(clean_env, tmp_path):
    clean_env.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    assert _session(_settings()).verify == "/etc/ssl/bundle.pem"
    cacert = tmp_path / "ca.pem"
    cacert.write_bytes(_self_signed_pem())
    assert _session(_settings(VAULT_CACERT=str(cacert))).verify == str(cacert)
    assert _session(_settings(VAULT_SKIP_VERIFY="true")).verify is False
