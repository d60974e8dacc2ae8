"""Bootstrap in HSM mode against a real SoftHSM2 token and the session's real OpenBao.

A module fixture bootstraps one cluster per root key type (ec-p384, rsa-2048) in its own token
and mount prefix; the tests that break things make their own token and prefix.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pkcs11
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers.cluster import policy_verify
from tests.helpers.hsm import PIN_ENV, hsm_section, needs_softhsm, new_token
from vaultk8s import catalog, crypto
from vaultk8s.cli import main
from vaultk8s.config import ClusterConfig, load_config
from vaultk8s.errors import HsmError, PlanRefused, VaultError
from vaultk8s.hsm import SOFTHSM_MODULE, HsmRootAuthority, open_token, refresh_module
from vaultk8s.hsm.keys import cka_id
from vaultk8s.ops.bootstrap import BootstrapReport, bootstrap
from vaultk8s.vault.gateway import VaultGateway

pytestmark = [pytest.mark.integration, needs_softhsm]

CA_NAMES = tuple(ca.name for ca in catalog.CAS)


def cluster_yaml(prefix: str, hsm_key_type: str | None, pin_env: str = PIN_ENV, label: str = "vaultk8s") -> str:
    text = (
        "cluster: {name: demo, endpoint: 'https://10.0.0.10:6443'}\n"
        "pki: {key_type: ec-p256, leaf_ttl: 24h, ca_ttl: 87600h}\n"
        f"vault: {{mount_prefix: '{prefix}'}}\n"
        "nodes:\n"
        "  control_plane: [{name: cp-1, ips: [127.0.0.1], sans: [localhost]}]\n"
        "  workers: [{name: worker-1, ips: [10.0.1.1]}]\n"
    )
    if hsm_key_type:
        text += yaml.safe_dump({"hsm": hsm_section(hsm_key_type, pin_env=pin_env, label=label)})
    return text


def write_config(path: Path, *args, **kwargs) -> ClusterConfig:
    path.write_text(cluster_yaml(*args, **kwargs))
    return load_config(path)


def run_bootstrap(config: ClusterConfig, out: Path, env: dict[str, str], **kwargs) -> BootstrapReport:
    return bootstrap(config, out, VaultGateway.from_env(env), now=datetime.now(timezone.utc), **kwargs)


def token_objects(settings) -> list[tuple[str, bytes]]:
    with open_token(settings) as session:
        return sorted((o.object_class.name, o[pkcs11.Attribute.ID]) for o in session.get_objects())


def mount_snapshot(gateway: VaultGateway, prefix: str) -> dict:
    """Every issuer's certificate and key of each mount: what a re-run must not change."""
    snapshot = {}
    for name in CA_NAMES:
        mount = f"{prefix}{name}"
        if gateway.mount_type(mount) is None:
            snapshot[name] = None
            continue
        issuers = vault_issuers(gateway, mount)
        default_pem = gateway.read_ca_pem(mount)
        snapshot[name] = {
            "issuers": {i: (v["key_id"], v["is_default"], v["serial_number"]) for i, v in issuers.items()},
            "keys": vault_keys(gateway, mount),
            "default": crypto.fingerprint(crypto.load_cert(default_pem)) if default_pem else None,
        }
    return snapshot


def _list(gateway: VaultGateway, path: str) -> list[str]:
    try:
        return sorted(gateway.client.list(path)["data"]["keys"])
    except Exception:  # hvac raises InvalidPath for an empty LIST
        return []


def vault_keys(gateway: VaultGateway, mount: str) -> list[str]:
    return _list(gateway, f"{mount}/keys")


def vault_issuers(gateway: VaultGateway, mount: str) -> dict:
    try:
        return gateway.client.list(f"{mount}/issuers")["data"]["key_info"]
    except Exception:
        return {}


# --- one bootstrapped cluster per root key type ------------------------------------------------

@dataclass
class Cluster:
    config: ClusterConfig
    config_path: Path
    out: Path
    state: Path
    env: dict[str, str]
    prefix: str
    token: object
    first: BootstrapReport
    seconds: float

    @property
    def gateway(self) -> VaultGateway:
        return VaultGateway.from_env(self.env)

    def roots(self) -> dict[str, x509.Certificate]:
        with open_token(self.config.hsm) as session:
            authority = HsmRootAuthority(session, self.config.hsm.key_type, scope=self.config.hsm_scope)
            return {ca.name: authority.ensure_root(ca.name, ca.common_name, self.config.ca_ttl,
                                                   datetime.now(timezone.utc)) for ca in catalog.CAS}


@pytest.fixture(scope="module", params=["ec-p384", "rsa-2048"])
def cluster(request, openbao, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"hsm-{request.param}")
    prefix = f"t{uuid.uuid4().hex[:8]}/"
    with pytest.MonkeyPatch.context() as mp:
        token = new_token(base / "state", mp)
        config = write_config(base / "cluster.yaml", prefix, request.param)
        env = openbao.as_environ()
        started = time.monotonic()
        report = run_bootstrap(config, base / "out", env)
        seconds = time.monotonic() - started
        yield Cluster(config, base / "cluster.yaml", base / "out", base / "state", env, prefix, token,
                      report, seconds)


def test_first_bootstrap_makes_intermediates(cluster):
    kinds = [a.kind for a in cluster.first.actions]
    assert kinds.count("hsm-intermediate") == 3 and "generate-root" not in kinds
    print(f"\n{cluster.config.hsm.key_type}: first HSM bootstrap {cluster.seconds:.2f}s")


def test_root_keys_stay_in_the_token(cluster):
    with open_token(cluster.config.hsm) as session:
        privates = list(session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
        assert sorted(p[pkcs11.Attribute.ID] for p in privates) == sorted(cka_id(cluster.config.hsm_scope + n) for n in CA_NAMES)
        for private in privates:
            assert private[pkcs11.Attribute.EXTRACTABLE] is False
            assert private[pkcs11.Attribute.SENSITIVE] is True
            assert private[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
            secret = pkcs11.Attribute.VALUE if private.key_type == pkcs11.KeyType.EC \
                else pkcs11.Attribute.PRIVATE_EXPONENT
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                private[secret]
    roots = cluster.roots()
    assert len({_spki(r.public_key()) for r in roots.values()}) == 3
    assert all(crypto.key_type_of(r.public_key()) == cluster.config.hsm.key_type for r in roots.values())


def test_every_leaf_verifies_via_the_intermediate_to_the_hsm_root(cluster, tmp_path):
    roots = cluster.roots()
    checked = 0
    for node in cluster.config.nodes:
        pki = cluster.out / node.name / "pki"
        for ca in catalog.cas_for(node.control_plane):
            assert crypto.load_certs((pki / ca.cert_file).read_bytes()) == [roots[ca.name]]  # ca.crt: root only
        for spec in catalog.certs_for(node.control_plane):
            leaf_file, ca_file = pki / spec.cert_file, pki / catalog.ca(spec.ca).cert_file
            chain = crypto.load_certs(leaf_file.read_bytes())
            assert len(chain) == 2 and not crypto.is_self_signed(chain[1])
            _openssl_verify(ca_file, leaf_file)
            verified = policy_verify(spec, node.name, crypto.load_certs(ca_file.read_bytes()), chain)
            assert verified[-1] == roots[spec.ca] and len(verified) == 3
            checked += 1
    assert checked == len(catalog.certs_for(True)) + len(catalog.certs_for(False))


def _openssl_verify(ca_file: Path, leaf_file: Path) -> None:
    # -untrusted: the leaf file itself (leaf + intermediate) supplies the intermediate.
    result = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(ca_file),
                             "-untrusted", str(leaf_file), str(leaf_file)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result.stdout + result.stderr


def test_no_root_key_material_in_vault_or_on_disk(cluster):
    gateway, roots = cluster.gateway, cluster.roots()
    for name in CA_NAMES:
        mount = f"{cluster.prefix}{name}"
        issuers = vault_issuers(gateway, mount)
        keys = vault_keys(gateway, mount)
        assert len(keys) == 1 and len(issuers) == 2  # the intermediate's key; intermediate + root
        by_key = {bool(v["key_id"]): v for v in issuers.values()}
        assert by_key[True]["key_id"] == keys[0] and by_key[True]["is_default"]
        root_issuer = next(i for i, v in issuers.items() if not v["key_id"])
        root_pem = gateway.read(f"{mount}/issuer/{root_issuer}")["data"]
        assert not root_pem.get("key_id") and crypto.load_cert(root_pem["certificate"]) == roots[name]
    root_keys = {_spki(r.public_key()) for r in roots.values()}
    scanned = 0
    for directory in (cluster.out, cluster.state):
        for path in directory.rglob("*"):
            if path.is_file() and not path.is_symlink():
                for key in _private_keys(path.read_bytes()):
                    scanned += 1
                    assert _spki(key.public_key()) not in root_keys, path
    # Every leaf key and each control plane's sa.key was looked at (so the scan does find keys),
    # and none is a root's.
    assert scanned == sum(len(catalog.certs_for(n.control_plane)) + n.control_plane for n in cluster.config.nodes)


def _private_keys(data: bytes):
    marker = b"-----BEGIN"
    for block in data.split(marker)[1:]:
        pem = marker + block
        if b"PRIVATE KEY-----" in pem.split(b"\n", 1)[0]:
            yield serialization.load_pem_private_key(pem, password=None)
    try:
        yield serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        pass


def test_second_bootstrap_changes_nothing(cluster):
    before_token = token_objects(cluster.config.hsm)
    before_mounts = mount_snapshot(cluster.gateway, cluster.prefix)
    report = run_bootstrap(cluster.config, cluster.out, cluster.env)
    assert report.actions == [] and report.kept > 0
    assert token_objects(cluster.config.hsm) == before_token and len(before_token) == 9  # 3 x (priv, pub, cert)
    assert mount_snapshot(cluster.gateway, cluster.prefix) == before_mounts
    assert report.ca_fingerprints == cluster.first.ca_fingerprints


def test_dropping_the_hsm_block_is_refused(cluster, tmp_path):
    config = write_config(tmp_path / "c.yaml", cluster.prefix, None)
    with pytest.raises(PlanRefused, match="intermediate signed by a root outside Vault") as err:
        run_bootstrap(config, cluster.out, cluster.env, dry_run=True)
    assert "\n" not in str(err.value)


def test_another_tokens_root_is_refused(cluster, tmp_path, monkeypatch):
    other = new_token(tmp_path / "other", monkeypatch)
    before = mount_snapshot(cluster.gateway, cluster.prefix)
    with pytest.raises(PlanRefused, match="not signed by the token's root for kubernetes-ca .token root: none"):
        run_bootstrap(cluster.config, cluster.out, cluster.env)
    assert token_objects(cluster.config.hsm) == []  # nothing created in the wrong token
    assert mount_snapshot(cluster.gateway, cluster.prefix) == before
    assert other.conf_path != cluster.token.conf_path


# --- failures leave Vault as it was ------------------------------------------------------------

def _no_mounts(env: dict[str, str], prefix: str) -> bool:
    gateway = VaultGateway.from_env(env)
    return all(gateway.mount_type(f"{prefix}{n}") is None for n in CA_NAMES)


def _cli(monkeypatch, capsys, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["vaultk8s", *args])
    code = main.run()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("dry_run", [False, True])
def test_wrong_pin_fails_before_vault_is_touched(tmp_path, monkeypatch, capsys, vault_env, mount_prefix, dry_run):
    token = new_token(tmp_path / "state", monkeypatch)
    monkeypatch.setenv(PIN_ENV, "wrong-pin-123456")
    (tmp_path / "c.yaml").write_text(cluster_yaml(mount_prefix, "ec-p256"))
    args = ["bootstrap", "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "out")] + (["--dry-run"] if dry_run else [])
    code, out, err = _cli(monkeypatch, capsys, vault_env, *args)
    assert code == HsmError.exit_code and out == ""
    assert err.startswith("error: token 'vaultk8s': the PIN was rejected") and err.count("\n") == 1
    assert "wrong-pin-123456" not in err and token.pin not in err
    assert _no_mounts(vault_env, mount_prefix)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # the writability probe may make the dir


def test_token_not_found_fails_before_vault_is_touched(tmp_path, monkeypatch, capsys, vault_env, mount_prefix):
    new_token(tmp_path / "state", monkeypatch)
    (tmp_path / "c.yaml").write_text(cluster_yaml(mount_prefix, "ec-p256", label="nope"))
    code, _, err = _cli(monkeypatch, capsys, vault_env, "bootstrap", "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "out"))
    assert code == HsmError.exit_code and err.startswith("error: no PKCS#11 token with label 'nope'")
    assert err.count("\n") == 1 and _no_mounts(vault_env, mount_prefix)


def test_missing_module_is_one_line(tmp_path, monkeypatch, capsys, vault_env, mount_prefix):
    text = cluster_yaml(mount_prefix, "ec-p256").replace(str(SOFTHSM_MODULE), "/nonexistent/libp11.so")
    (tmp_path / "c.yaml").write_text(text)
    code, _, err = _cli(monkeypatch, capsys, vault_env, "bootstrap", "-c", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "out"))
    assert code == HsmError.exit_code and "PKCS#11 module /nonexistent/libp11.so not found" in err
    assert err.count("\n") == 1 and _no_mounts(vault_env, mount_prefix)


def test_unsupported_mechanism_fails_before_vault_is_touched(tmp_path, monkeypatch, vault_env, mount_prefix):
    token = new_token(tmp_path / "state", monkeypatch)
    with token.conf_path.open("a") as conf:  # SoftHSM's allow list: RSA only
        conf.write("slots.mechanisms = CKM_RSA_PKCS_KEY_PAIR_GEN,CKM_SHA256_RSA_PKCS\n")
    refresh_module(SOFTHSM_MODULE)
    config = write_config(tmp_path / "c.yaml", mount_prefix, "ec-p384")
    with pytest.raises(HsmError, match="does not support EC_KEY_PAIR_GEN, ECDSA needed for key_type ec-p384"):
        run_bootstrap(config, tmp_path / "out", vault_env)
    assert _no_mounts(vault_env, mount_prefix) and token_objects(config.hsm) == []


def test_two_clusters_on_one_token_get_distinct_roots(tmp_path, monkeypatch, vault_env, mount_prefix):
    """Shared roots would make one cluster's API server trust the other cluster's kubelets."""
    new_token(tmp_path / "state", monkeypatch)
    first = write_config(tmp_path / "a.yaml", mount_prefix, "ec-p256")
    second = write_config(tmp_path / "b.yaml", mount_prefix.rstrip("/") + "b/", "ec-p256")
    run_bootstrap(first, tmp_path / "out-a", vault_env)
    run_bootstrap(second, tmp_path / "out-b", vault_env)
    ca_a = (tmp_path / "out-a" / "cp-1" / "pki" / "ca.crt").read_bytes()
    ca_b = (tmp_path / "out-b" / "cp-1" / "pki" / "ca.crt").read_bytes()
    assert ca_a != ca_b
    with open_token(first.hsm) as session:
        labels = sorted(o[pkcs11.Attribute.LABEL] for o in session.get_objects(
            {pkcs11.Attribute.CLASS: pkcs11.ObjectClass.PRIVATE_KEY}))
    assert len(labels) == 6 and f"vaultk8s:{first.hsm_scope}kubernetes-ca" in labels


def test_key_without_certificate_refused_even_in_dry_run(tmp_path, monkeypatch, vault_env, mount_prefix):
    new_token(tmp_path / "state", monkeypatch)
    config = write_config(tmp_path / "c.yaml", mount_prefix, "ec-p256")
    with open_token(config.hsm) as session:
        HsmRootAuthority(session, "ec-p256", scope=config.hsm_scope).ensure_root(
            "etcd-ca", "etcd-ca", config.ca_ttl, datetime.now(timezone.utc))
        for obj in session.get_objects({pkcs11.Attribute.CLASS: pkcs11.ObjectClass.CERTIFICATE}):
            obj.destroy()
    for dry_run in (True, False):
        with pytest.raises(HsmError, match="etcd-ca: the token holds the root key but no root certificate"):
            run_bootstrap(config, tmp_path / "out", vault_env, dry_run=dry_run)
    assert _no_mounts(vault_env, mount_prefix)


def test_vault_root_cluster_refuses_hsm_mode(tmp_path, monkeypatch, vault_env, mount_prefix):
    plain = write_config(tmp_path / "plain.yaml", mount_prefix, None)
    run_bootstrap(plain, tmp_path / "out", vault_env)
    new_token(tmp_path / "state", monkeypatch)
    hsm = write_config(tmp_path / "hsm.yaml", mount_prefix, "ec-p256")
    with pytest.raises(PlanRefused, match="already has a CA whose root key is in Vault.*re-trust"):
        run_bootstrap(hsm, tmp_path / "out", vault_env)
    assert token_objects(hsm.hsm) == []


@pytest.mark.parametrize("failing", ["sign", "set-default"])
def test_failure_after_the_csr_removes_the_mount_key(tmp_path, monkeypatch, vault_env, mount_prefix, failing):
    new_token(tmp_path / "state", monkeypatch)
    config = write_config(tmp_path / "c.yaml", mount_prefix, "ec-p256")
    with monkeypatch.context() as patch:
        if failing == "sign":
            def refuse(self, *args, **kwargs):
                raise HsmError("the token refused to sign (test)")
            patch.setattr(HsmRootAuthority, "sign_intermediate", refuse)
        else:
            def refuse(self, mount, issuer_id):
                raise VaultError(f"Vault refused to set the default issuer of {mount}: (test)")
            patch.setattr(VaultGateway, "set_default_issuer", refuse)
        with pytest.raises((HsmError, VaultError), match=r"\(test\)"):
            run_bootstrap(config, tmp_path / "out", vault_env)
    gateway = VaultGateway.from_env(vault_env)
    mount = f"{mount_prefix}kubernetes-ca"  # the first CA: it failed there
    assert vault_keys(gateway, mount) == [] and vault_issuers(gateway, mount) == {}
    assert gateway.read_ca_pem(mount) is None
    report = run_bootstrap(config, tmp_path / "out", vault_env)  # working again: the re-run completes
    assert [a.kind for a in report.actions].count("hsm-intermediate") == 3
    assert len(vault_keys(gateway, mount)) == 1 and len(token_objects(config.hsm)) == 9


# --- dev up --hsm --------------------------------------------------------------------------------

def test_dev_up_hsm_prints_token_exports(tmp_path, monkeypatch, capsys, free_port):
    state = tmp_path / "dev"
    monkeypatch.setattr(sys, "argv", ["vaultk8s", "dev", "up", "--hsm", "--state-dir", str(state),
                                      "--port", str(free_port())])
    try:
        assert main.run() == 0
        out = capsys.readouterr().out
    finally:
        monkeypatch.setattr(sys, "argv", ["vaultk8s", "dev", "down", "--state-dir", str(state)])
        main.run()
    pin = (state / "softhsm" / "user-pin").read_text().strip()
    assert pin not in out
    assert f"export SOFTHSM2_CONF={state / 'softhsm' / 'softhsm2.conf'}\n" in out
    pin_file = state / "softhsm" / "user-pin"
    shell = subprocess.run(["bash", "-c", out + f'test "$VAULTK8S_HSM_PIN" = "$(cat {pin_file})" && echo same'],
                           capture_output=True, text=True)
    assert shell.stdout.strip() == "same"


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_certs_check_follows_the_intermediate_chain(cluster):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "vaultk8s", "certs", "check", "--out", str(cluster.out),
                           "--output", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["problems"] == 0
