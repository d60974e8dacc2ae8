"""Reading the certificate a Vault listener serves: plain HTTP has none, a closed port is one clear line."""

from __future__ import annotations

import socket

import pytest

from vaultk8s.errors import VaultError
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
