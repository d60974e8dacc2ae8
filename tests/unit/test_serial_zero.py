"""kubeadm's CAs have serial number 0. cryptography 48 reads them with a warning that a future release
will refuse them; on that day a load says so and names the way out instead of "unreadable".

The certificate is made by openssl, as kubeadm's are. The refusing release does not exist yet, so its
loaders are stood in for by ones that raise ValueError, as cryptography's do for a certificate they
refuse."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from vaultk8s import crypto
from vaultk8s.cli import main
from vaultk8s.errors import CertificateRefused


def openssl_root(directory: Path, serial: int) -> bytes:
    cert = directory / f"ca-{serial}.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(directory / f"ca-{serial}.key"), "-subj", "/CN=kubernetes",
                    "-set_serial", str(serial), "-days", "1", "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert.read_bytes()


@pytest.fixture
def refusing_release(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: bytes, *args):
        raise ValueError("error parsing asn1 value")

    monkeypatch.setattr(x509, "load_pem_x509_certificate", refuse)
    monkeypatch.setattr(x509, "load_pem_x509_certificates", refuse)


def test_a_serial_zero_root_loads_today(tmp_path):
    pem = openssl_root(tmp_path, 0)
    assert crypto.load_cert(pem).serial_number == 0
    assert [c.serial_number for c in crypto.load_certs(pem)] == [0]


@pytest.mark.parametrize("load, serials", [(crypto.load_cert, (0, 1)), (crypto.load_certs, (1, 0))])
def test_a_release_that_refuses_it_names_the_cause_and_the_way_out(tmp_path, refusing_release, load, serials):
    pem = b"".join(openssl_root(tmp_path, n) for n in serials)  # a bundle during a rotation
    with pytest.raises(CertificateRefused) as refused:
        load(pem)
    message = str(refused.value)
    assert "serial number is 0" in message and "kubernetes" in message and "vaultk8s ca rotate" in message
    assert "\n" not in message


@pytest.mark.parametrize("pem", [b"junk", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_other_unreadable_text_stays_a_value_error(pem):
    with pytest.raises(ValueError):
        crypto.load_certs(pem)


def test_a_refused_positive_serial_is_not_blamed_on_the_serial(tmp_path, refusing_release):
    with pytest.raises(ValueError) as refused:
        crypto.load_certs(openssl_root(tmp_path, 1))
    assert not isinstance(refused.value, CertificateRefused)


def test_certs_check_says_why_in_one_line(tmp_path, refusing_release, monkeypatch, capsys):
    pki = tmp_path / "out" / "node-1" / "pki"
    pki.mkdir(parents=True)
    (pki / "ca.crt").write_bytes(openssl_root(tmp_path, 0))
    monkeypatch.setattr(sys, "argv", ["vaultk8s", "certs", "check", "--out", str(tmp_path / "out")])
    assert main.run() == CertificateRefused.exit_code == 10
    err = capsys.readouterr().err
    assert err.startswith("error: cryptography ") and "serial number is 0" in err and err.count("\n") == 1


def test_one_certificate_is_not_blamed_on_a_later_one_it_never_read(tmp_path, refusing_release):
    pem = openssl_root(tmp_path, 1) + openssl_root(tmp_path, 0)  # load_cert reads only the first
    with pytest.raises(ValueError) as refused:
        crypto.load_cert(pem)
    assert not isinstance(refused.value, CertificateRefused)
