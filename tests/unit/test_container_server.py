"""The compose demo's OpenBao config and listener TLS (pure parts of vaultk8s.dev.container)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from vaultk8s.dev.container import prepare_container_server, render_container_config
from vaultk8s.dev.tls import render_tls_material
from vaultk8s.errors import DevServerError


def test_config_listens_in_the_container_and_advertises_the_service_name():
    hcl = render_container_config(Path("/state"), "openbao")
    assert 'address         = "0.0.0.0:8200"' in hcl
    assert 'api_addr      = "https://openbao:8200"' in hcl
    assert 'node_id                = "openbao"' in hcl and "performance_multiplier = 1" in hcl


def test_listener_cert_names_the_service_and_keeps_loopback():
    tls = render_tls_material(dt.datetime.now(dt.timezone.utc), ("openbao",))
    sans = x509.load_pem_x509_certificate(tls.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "openbao"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


@pytest.mark.parametrize("name", ["", "open bao", "a/b", "-x", "x" * 300], ids=["empty", "space", "slash", "dash", "long"])
def test_bad_hostname_is_refused_before_anything_is_written(tmp_path, name):
    with pytest.raises(DevServerError, match="is not a DNS name"):
        prepare_container_server(tmp_path / "state", name)
    assert not (tmp_path / "state").exists()


def test_prepare_writes_tls_once_and_keeps_the_ca_key_private(tmp_path):
    argv, _ = prepare_container_server(tmp_path / "s", "openbao")
    assert argv[1:] == ["server", f"-config={tmp_path / 's' / 'bao.hcl'}"]
    first = (tmp_path / "s" / "server.pem").read_bytes()
    prepare_container_server(tmp_path / "s", "openbao")
    assert (tmp_path / "s" / "server.pem").read_bytes() == first
    # Kept to re-issue the listener certificate (dev/listener.py); only the server's volume holds it.
    for key in ("ca.key", "server.key"):
        assert oct((tmp_path / "s" / key).stat().st_mode & 0o777) == "0o600"


def test_a_renamed_service_gets_a_new_listener_cert_from_the_same_ca(tmp_path):
    prepare_container_server(tmp_path / "s", "openbao")
    first, ca = ((tmp_path / "s" / name).read_bytes() for name in ("server.pem", "ca.pem"))
    prepare_container_server(tmp_path / "s", "vault")
    cert = x509.load_pem_x509_certificate((tmp_path / "s" / "server.pem").read_bytes())
    assert (tmp_path / "s" / "server.pem").read_bytes() != first
    assert (tmp_path / "s" / "ca.pem").read_bytes() == ca  # clients keep trusting it
    assert "vault" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)


def test_the_listen_address_reaches_the_config(tmp_path):
    prepare_container_server(tmp_path / "s", "localhost", port=18200, listen_host="127.0.0.1")
    hcl = (tmp_path / "s" / "bao.hcl").read_text()
    assert 'address         = "127.0.0.1:18200"' in hcl and 'cluster_address = "127.0.0.1:18201"' in hcl
