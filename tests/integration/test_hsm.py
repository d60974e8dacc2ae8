"""HSM root keys against a real SoftHSM2 token; each test gets its own token under tmp_path.

Each test exports its own SOFTHSM2_CONF; `load_module` notices the change and re-initialises the
already-loaded module, so tests in one process do not see each other's tokens.
"""

import json
import shutil
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from typer.testing import CliRunner

from vaultk8s import catalog
from vaultk8s.errors import HsmError
from vaultk8s.hsm import (
    SOFTHSM_MODULE,
    HsmRootAuthority,
    HsmSettings,
    init_dev_token,
    load_module,
    open_token,
    refresh_module,
)
from vaultk8s.hsm.devtoken import init_token
from vaultk8s.hsm.keys import cka_id

DEFAULT_CA_NAMES = tuple(ca.name for ca in catalog.CAS)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SOFTHSM_MODULE.exists() or not shutil.which("softhsm2-util"),
                       reason="SoftHSM2 is not installed"),
]

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
TEN_YEARS = timedelta(days=3650)
PIN_ENV = "VAULTK8S_TEST_HSM_PIN"


@pytest.fixture
def dev_token(tmp_path, monkeypatch):
    token = init_dev_token(tmp_path / "state")
    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf_path))
    monkeypatch.setenv(PIN_ENV, token.pin)
    return token


def _settings(key_type="ec-p256", **changes) -> HsmSettings:
    base = HsmSettings(SOFTHSM_MODULE, "vaultk8s", None, PIN_ENV, None, key_type)
    return replace(base, **changes)


def _roots(settings, scope: str = ""):
    with open_token(settings) as session:
        authority = HsmRootAuthority(session, settings.key_type, scope=scope)
        return {ca: authority.ensure_root(ca, ca, TEN_YEARS, NOW) for ca in DEFAULT_CA_NAMES}


def _spki(cert):
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def test_three_distinct_non_extractable_root_keys(dev_token):
    roots = _roots(_settings())
    assert len({_spki(cert) for cert in roots.values()}) == 3
    with open_token(_settings()) as session:
        report = HsmRootAuthority(session, "ec-p256").status(DEFAULT_CA_NAMES)
        for ca in DEFAULT_CA_NAMES:
            private = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, id=cka_id(ca))
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                private[pkcs11.Attribute.VALUE]
            assert private[pkcs11.Attribute.TOKEN] and private[pkcs11.Attribute.PRIVATE]
    for entry in report:
        assert entry.key_found and entry.cert_found and entry.key_type == "ec-p256"
        assert entry.sensitive and entry.always_sensitive
        assert entry.extractable is False and entry.never_extractable is True
        assert entry.sha256_fingerprint == roots[entry.ca_name].fingerprint(
            hashes.SHA256()).hex(":")


def test_ensure_root_is_idempotent(dev_token):
    first = _roots(_settings())
    later = NOW + timedelta(days=1)
    with open_token(_settings()) as session:
        authority = HsmRootAuthority(session, "ec-p256")
        again = authority.ensure_root("etcd-ca", "etcd-ca", TEN_YEARS, later)
        keys = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
        certs = list(session.get_objects(
            {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.CERTIFICATE}))
    assert again == first["etcd-ca"]
    assert len(keys) == 3 and len(certs) == 3


def test_root_certificate_profile(dev_token):
    root = _roots(_settings("ec-p384"))["kubernetes-ca"]
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = root.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert basic.critical and basic.value.ca
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert aki.key_identifier == ski.digest
    assert root.not_valid_before_utc < NOW and root.not_valid_after_utc == NOW + TEN_YEARS
    assert root.signature_hash_algorithm.name == "sha384"
    root.verify_directly_issued_by(root)


@pytest.mark.parametrize("key_type", ["ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096"])
def test_intermediate_chain_verifies(dev_token, tmp_path, key_type):
    settings = _settings(key_type)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k8s intermediate")]))
           .sign(intermediate_key, hashes.SHA256()))
    with open_token(settings) as session:
        authority = HsmRootAuthority(session, key_type)
        root = authority.ensure_root("kubernetes-ca", "kubernetes", TEN_YEARS, NOW)
        intermediate = authority.sign_intermediate("kubernetes-ca", csr, 2 * TEN_YEARS, NOW)

    assert intermediate.subject == csr.subject and intermediate.issuer == root.subject
    assert intermediate.not_valid_after_utc == root.not_valid_after_utc  # capped at the root
    basic = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0
    aki = intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest

    leaf = _leaf(intermediate, intermediate_key)
    _openssl_verify(tmp_path, root, intermediate, leaf)
    verifier = (PolicyBuilder().store(Store([root])).time(NOW + timedelta(hours=1))
                .build_server_verifier(x509.DNSName("kubernetes.default")))
    chain = verifier.verify(leaf, [intermediate])
    assert chain == [leaf, intermediate, root]


def _leaf(intermediate, intermediate_key):
    key = ec.generate_private_key(ec.SECP256R1())
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(intermediate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("kubernetes.default")]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                intermediate_key.public_key()), critical=False)
            .sign(intermediate_key, hashes.SHA256()))


def _openssl_verify(tmp_path: Path, root, intermediate, leaf) -> None:
    files = {}
    for name, cert in (("root", root), ("intermediate", intermediate), ("leaf", leaf)):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # -attime: the certificates are issued for the fixed test clock, not the wall clock.
    attime = str(int((NOW + timedelta(hours=1)).timestamp()))
    for target, extra in (("intermediate", []), ("leaf", ["-untrusted", files["intermediate"]])):
        result = subprocess.run(["openssl", "verify", "-attime", attime, "-x509_strict",
                                 "-CAfile", files["root"], *extra, files[target]],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip().endswith(": OK")


def test_csr_with_bad_signature_refused(dev_token):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature value
    tampered = x509.load_der_x509_csr(bytes(der))
    with open_token(_settings()) as session:
        authority = HsmRootAuthority(session, "ec-p256")
        authority.ensure_root("etcd-ca", "etcd-ca", TEN_YEARS, NOW)
        with pytest.raises(HsmError, match="signature does not verify"):
            authority.sign_intermediate("etcd-ca", tampered, TEN_YEARS, NOW)


def test_wrong_pin_is_one_line_without_the_pin(dev_token, monkeypatch):
    monkeypatch.setenv(PIN_ENV, "not-the-pin-0000")
    with pytest.raises(HsmError) as err:
        with open_token(_settings()):
            pass
    text = str(err.value)
    assert "wrong PIN" in text and "\n" not in text
    assert "not-the-pin-0000" not in text and dev_token.pin not in text
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_module(dev_token):
    with pytest.raises(HsmError, match="PKCS#11 module /nonexistent/libp11.so not found"):
        with open_token(_settings(module=Path("/nonexistent/libp11.so"))):
            pass


def test_unloadable_module(dev_token, tmp_path):
    bogus = tmp_path / "bogus.so"
    bogus.write_bytes(b"not an ELF file")
    with pytest.raises(HsmError, match="cannot load PKCS#11 module"):
        with open_token(_settings(module=bogus)):
            pass


def test_token_not_found(dev_token):
    with pytest.raises(HsmError, match="no PKCS#11 token with label 'other'"):
        with open_token(_settings(token_label="other")):
            pass
    with pytest.raises(HsmError, match="no PKCS#11 token with serial"):
        with open_token(_settings(token_label=None, token_serial="0000000000000000")):
            pass


def test_token_found_by_serial(dev_token):
    # Through load_module, not pkcs11.lib: only it re-initialises for this test's SOFTHSM2_CONF.
    serial = load_module(SOFTHSM_MODULE).get_token(token_label="vaultk8s").serial.decode()
    with open_token(_settings(token_label=None, token_serial=serial)) as session:
        assert session.token.label == "vaultk8s"


def test_duplicate_token_label_refused(dev_token):
    init_token(dev_token.conf_path, "vaultk8s", dev_token.pin, dev_token.so_pin)
    with pytest.raises(HsmError, match="2 PKCS#11 tokens have label 'vaultk8s'; select"):
        with open_token(_settings()):
            pass


def _delete(session, object_class, ca):
    for obj in session.get_objects({pkcs11.Attribute.CLASS: object_class,
                                    pkcs11.Attribute.ID: cka_id(ca)}):
        obj.destroy()


def test_key_without_certificate_refused_unless_allowed(dev_token):
    old = _roots(_settings())["front-proxy-ca"]
    with open_token(_settings()) as session:
        _delete(session, pkcs11.ObjectClass.CERTIFICATE, "front-proxy-ca")
        authority = HsmRootAuthority(session, "ec-p256")
        with pytest.raises(HsmError, match="holds the root key but no root certificate"):
            authority.ensure_root("front-proxy-ca", "front-proxy-ca", TEN_YEARS, NOW)
        new = authority.ensure_root("front-proxy-ca", "front-proxy-ca", TEN_YEARS, NOW,
                                    allow_new_cert=True)
    assert _spki(new) == _spki(old) and new.serial_number != old.serial_number


def test_certificate_without_key_refused(dev_token):
    _roots(_settings())
    with open_token(_settings()) as session:
        _delete(session, pkcs11.ObjectClass.PRIVATE_KEY, "etcd-ca")
        authority = HsmRootAuthority(session, "ec-p256")
        with pytest.raises(HsmError, match="root certificate but not its private key"):
            authority.ensure_root("etcd-ca", "etcd-ca", TEN_YEARS, NOW)
        report = {entry.ca_name: entry for entry in authority.status(DEFAULT_CA_NAMES)}
    assert not report["etcd-ca"].key_found and report["etcd-ca"].cert_found


def test_key_type_mismatch_refused(dev_token):
    _roots(_settings("ec-p256"))
    with open_token(_settings("ec-p384")) as session:
        with pytest.raises(HsmError, match="root key in the token is ec-p256 but key_type is"):
            HsmRootAuthority(session, "ec-p384").ensure_root(
                "kubernetes-ca", "kubernetes", TEN_YEARS, NOW)


def test_unsupported_mechanism_refused(dev_token):
    # SoftHSM's own switch for hiding mechanisms (2.6.1 ignored the "-CKM_ECDSA" deny form in
    # our runs; an allow list works). The module rereads its conf on re-initialise.
    with dev_token.conf_path.open("a") as conf:
        conf.write("slots.mechanisms = CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256_RSA_PKCS\n")
    refresh_module(SOFTHSM_MODULE)
    with open_token(_settings()) as session:
        with pytest.raises(HsmError, match="does not support EC_KEY_PAIR_GEN, ECDSA needed for key_type ec-p256"):
            HsmRootAuthority(session, "ec-p256").ensure_root(
                "kubernetes-ca", "kubernetes", TEN_YEARS, NOW)
        keys = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
    assert keys == []  # refused before generating anything


def test_dev_token_is_reused(dev_token, tmp_path):
    again = init_dev_token(tmp_path / "state")
    assert again.pin == dev_token.pin and again.conf_path == dev_token.conf_path
    assert oct(dev_token.pin_file.stat().st_mode & 0o777) == "0o600"
    assert dev_token.pin not in repr(again)


def test_cli_status_json(dev_token, tmp_path):
    from vaultk8s.cli.main import app

    _roots(_settings(), scope="demo/")  # the scope of cluster "demo" with no mount prefix
    config = tmp_path / "cluster.yaml"
    config.write_text("cluster: {name: demo, endpoint: 'https://10.0.0.10:6443'}\n"
                      "nodes: {control_plane: [{name: cp-1, ips: [10.0.0.11]}]}\n"
                      f"hsm:\n  module: {SOFTHSM_MODULE}\n  token_label: vaultk8s\n"
                      f"  pin_env: {PIN_ENV}\n  key_type: ec-p256\n")
    result = CliRunner().invoke(app, ["hsm", "status", "--config", str(config),
                                      "--output", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [entry["ca_name"] for entry in report] == list(DEFAULT_CA_NAMES)
    assert all(entry["extractable"] is False for entry in report)


def test_token_calls_leave_no_openssl_errors_behind(dev_token):
    """SoftHSM's C_Initialize leaves OpenSSL errors that would break the next HTTPS read."""
    import ctypes
    import os

    libcrypto = ctypes.CDLL("libcrypto.so.3", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    libcrypto.ERR_peek_error.restype = ctypes.c_ulong
    refresh_module(SOFTHSM_MODULE)  # C_Finalize + C_Initialize, where SoftHSM leaves them
    assert libcrypto.ERR_peek_error() == 0
    _roots(_settings("rsa-2048"))
    assert libcrypto.ERR_peek_error() == 0
