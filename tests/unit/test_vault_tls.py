"""Reading the certificate a Vault listener serves: plain HTTP has none, a closed port is one clear line."""

from __future__ import annotations

import socket

import pytest

from vaultk8s.errors import VaultError, shown
from vaultk8s.vault.gateway import VaultGateway


def closed_port() -> int:
    with socket.socket() as sock:  # bound then closed: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_plain_http_serves_no_certificate():
    gateway = VaultGateway.from_env({"VAULT_ADDR": "http://127.0.0.1:8200"})
    assert gateway.addresses() == ["http://127.0.0.1:8200"]
    assert gateway.served_certificate_pem("http://127.0.0.1:8200") is None


def test_a_listener_that_does_not_answer_is_one_line_naming_it():
    addr = f"https://127.0.0.1:{closed_port()}"
    with pytest.raises(VaultError) as refused:
        VaultGateway.from_env({"VAULT_ADDR": addr}).served_certificate_pem(addr)
    assert str(refused.value) == f"cannot read the TLS certificate served at {addr}: Connection refused"


def test_a_vault_cacert_gone_since_start_is_a_note_not_a_failure(tmp_path):
    from datetime import datetime, timezone

    from vaultk8s.dev.tls import render_tls_material
    from vaultk8s.ops.status import vault_tls_lifetimes

    cacert = tmp_path / "ca.pem"
    cacert.write_bytes(render_tls_material(datetime.now(timezone.utc)).ca_cert)
    gateway = VaultGateway.from_env({"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_CACERT": str(cacert)})
    items, notes = vault_tls_lifetimes(gateway)
    assert [(i.kind, i.name, i.detail) for i in items] == [("vault-ca", f"VAULT_CACERT {cacert}", "CN=vaultk8s dev CA")]
    cacert.unlink()  # e.g. a rotated mount, between the agent's start and this round
    items, notes = vault_tls_lifetimes(gateway)
    assert items == []
    assert notes == ["Vault TLS: http://127.0.0.1:8200 serves plain HTTP: nothing expires, nothing is encrypted",
                     f"Vault TLS: VAULT_CACERT={shown(str(cacert))}: No such file or directory"]
