"""The dev server's pure parts: config, export lines, TLS material."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509

from vaultk8s.dev import VaultEnv, render_config
from vaultk8s.dev.tls import render_tls_material


def test_config_is_raft_with_tls_on_loopback():
    hcl = render_config(Path("/s"), 18200)
    assert 'storage "raft"' in hcl and 'path                   = "/s/raft"' in hcl
    assert 'address         = "127.0.0.1:18200"' in hcl
    assert 'cluster_addr  = "https://127.0.0.1:18201"' in hcl
    assert 'tls_key_file    = "/s/server.key"' in hcl
    assert "tls_disable" not in hcl


def test_export_lines_quote_for_the_shell_and_repr_hides_the_token():
    env = VaultEnv(addr="https://127.0.0.1:8200", token="s.secret", cacert=Path("/a b/ca.pem"))
    assert env.export_lines() == (
        "export VAULT_ADDR=https://127.0.0.1:8200\n"
        "export VAULT_TOKEN=s.secret\n"
        "export VAULT_CACERT='/a b/ca.pem'\n"
    )
    assert "s.secret" not in repr(env)


def test_server_cert_is_signed_by_the_ca_for_loopback():
    now = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    tls = render_tls_material(now)
    ca = x509.load_pem_x509_certificate(tls.ca_cert)
    server = x509.load_pem_x509_certificate(tls.server_cert)
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert server.not_valid_before_utc <= now < server.not_valid_after_utc
