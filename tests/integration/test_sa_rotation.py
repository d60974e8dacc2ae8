"""Service-account keys against a real OpenBao: tokens signed with sa.key verify with sa.pub across
stage / promote / retire, and bad states give one clear line with nothing written."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone

import hvac
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.helpers import policy as policy_helpers
from tests.helpers.nodes import run_cli, tree_state, write_cluster
from vaultk8s.config import load_config
from vaultk8s.errors import PlanRefused, VaultError
from vaultk8s.ops import sa as sa_ops
from vaultk8s.plan import sa
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

CONTROL_PLANE = [("cp-1", "10.0.0.11"), ("cp-2", "10.0.0.12")]


def _sign(key_pem: bytes, subject: str) -> str:
    key = serialization.load_pem_private_key(key_pem, password=None)
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    now = datetime.now(timezone.utc)
    claims = {"iss": "https://kubernetes.default.svc.cluster.local", "sub": subject, "aud": ["api"],
              "iat": now, "exp": now + timedelta(hours=1)}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": sa.jwt_kid(key.public_key())})


def _verifies(token: str, pub_pem: bytes) -> bool:
    """As kube-apiserver does: the token is valid if any key in sa.pub verifies it."""
    blocks = [b"-----BEGIN" + b for b in pub_pem.split(b"-----BEGIN")[1:]]
    for block in blocks:
        try:
            jwt.decode(token, serialization.load_pem_public_key(block), algorithms=["RS256", "ES256"], audience="api")
            return True
        except jwt.InvalidTokenError:
            continue
    return False


def _files(out, node="cp-1"):
    pki = out / node / "pki"
    return (pki / "sa.key").read_bytes(), (pki / "sa.pub").read_bytes()


def _rotate(cluster, out, vault_env, phase, *extra, check=True):
    return run_cli(["sa", "rotate", "-c", str(cluster), "-o", str(out), "--phase", phase, *extra], vault_env, check)


def _assert_no_secret(*results):
    for r in results:
        assert "PRIVATE KEY" not in r.stdout + r.stderr


def _one_line_error(result, code: int, text: str):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr
    _assert_no_secret(result)


@pytest.mark.parametrize("key_type", ["rsa-2048", "ec-p256"])
def test_tokens_verify_across_rotation(tmp_path, vault_env, mount_prefix, key_type):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE, [("w-1", "10.0.1.1")],
                            service_account={"key_type": key_type})
    out = tmp_path / "out"
    boot = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    key0, pub0 = _files(out)
    assert _files(out, "cp-2") == (key0, pub0)  # every control plane gets the same pair
    assert not (out / "w-1" / "pki" / "sa.key").exists()
    assert stat.S_IMODE((out / "cp-1" / "pki" / "sa.key").stat().st_mode) == 0o600
    old_token = _sign(key0, "system:serviceaccount:default:old")
    assert _verifies(old_token, pub0)

    staged = _rotate(cluster, out, vault_env, "stage")
    key1, pub1 = _files(out)
    assert key1 == key0 and pub1.count(b"BEGIN PUBLIC KEY") == 2  # stage touches sa.pub only
    assert _verifies(old_token, pub1)

    promoted = _rotate(cluster, out, vault_env, "promote")
    key2, pub2 = _files(out)
    assert key2 != key0 and pub2.count(b"BEGIN PUBLIC KEY") == 2
    new_token = _sign(key2, "system:serviceaccount:default:new")
    assert _verifies(old_token, pub2) and _verifies(new_token, pub2)

    early = _rotate(cluster, out, vault_env, "retire", check=False)
    _one_line_error(early, 6, "--force")
    assert _files(out) == (key2, pub2)

    retired = _rotate(cluster, out, vault_env, "retire", "--force")
    key3, pub3 = _files(out)
    assert key3 == key2 and pub3.count(b"BEGIN PUBLIC KEY") == 1
    assert not _verifies(old_token, pub3) and _verifies(new_token, pub3)
    assert _files(out, "cp-2") == (key3, pub3)
    _assert_no_secret(boot, staged, promoted, retired)


def test_phases_are_idempotent_and_bootstrap_keeps_the_key(tmp_path, vault_env, mount_prefix):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    for phase in ("stage", "promote"):
        _rotate(cluster, out, vault_env, phase)
        before = tree_state(out)
        again = _rotate(cluster, out, vault_env, phase)
        assert "already done" in again.stdout and tree_state(out) == before
    files = _files(out)
    rerun = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    assert rerun.stdout.startswith("no changes") and _files(out) == files

    status = json.loads(run_cli(["sa", "status", "-c", str(cluster), "--output", "json"], vault_env).stdout)
    assert [k["state"] for k in status["keys"]] == ["previous", "active"]
    assert status["keys"][0]["retire_after"] and status["grace_period"] == "48h"
    assert "retire" in status["next_step"]
    text = run_cli(["sa", "status", "-c", str(cluster)], vault_env).stdout
    assert "previous" in text and "PRIVATE" not in text


def test_retire_after_the_grace_period_without_force(tmp_path, vault_env, mount_prefix, monkeypatch):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE, service_account={"grace_period": "2h"})
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    _rotate(cluster, out, vault_env, "stage")
    _rotate(cluster, out, vault_env, "promote")
    config = load_config(cluster)
    gateway = VaultGateway.from_env(vault_env)
    now = datetime.now(timezone.utc)
    with pytest.raises(PlanRefused, match="1h59m left|2h left"):
        sa_ops.rotate(config, out, gateway, sa.SARotationPhase.RETIRE, now=now)
    report = sa_ops.rotate(config, out, gateway, sa.SARotationPhase.RETIRE, now=now + timedelta(hours=2, minutes=1))
    assert report.changed and _files(out)[1].count(b"BEGIN PUBLIC KEY") == 1


@pytest.mark.parametrize("first,second,message", [
    ("promote", None, "no key is staged"),
    ("retire", "stage", "not promoted yet"),
])
def test_out_of_order_phases_are_refused(tmp_path, vault_env, mount_prefix, first, second, message):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    if second:
        _rotate(cluster, out, vault_env, second)
    before = tree_state(out)
    _one_line_error(_rotate(cluster, out, vault_env, first, check=False), 6, message)
    assert tree_state(out) == before


def test_missing_kv_mount(tmp_path, vault_env, mount_prefix):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    out = tmp_path / "out"
    result = _rotate(cluster, out, vault_env, "stage", check=False)
    _one_line_error(result, 3, f"KV mount {mount_prefix}vaultk8s/ does not exist")
    assert not out.exists()
    status = run_cli(["sa", "status", "-c", str(cluster)], vault_env, check=False)
    _one_line_error(status, 3, "does not exist")


def test_corrupt_key_in_kv(tmp_path, vault_env, mount_prefix, openbao):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    client = hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))
    mount, path = f"{mount_prefix}vaultk8s", "it/service-account"
    doc = client.secrets.kv.v2.read_secret_version(path, mount_point=mount, raise_on_deleted_version=True)["data"]["data"]
    secret_body = doc["keys"][0]["private_pem"].splitlines()[1]
    doc["keys"][0]["private_pem"] = doc["keys"][0]["private_pem"].replace(secret_body, secret_body[::-1])
    client.secrets.kv.v2.create_or_update_secret(path, secret=doc, mount_point=mount)
    before = tree_state(out)
    for args in (["sa", "rotate", "-c", str(cluster), "-o", str(out), "--phase", "stage"],
                 ["bootstrap", "-c", str(cluster), "-o", str(out)],
                 ["sa", "status", "-c", str(cluster)]):
        result = run_cli(args, vault_env, check=False)
        _one_line_error(result, 3, "is corrupt: key #1 has an unreadable private key")
        assert secret_body not in result.stderr + result.stdout
    assert tree_state(out) == before


def test_check_and_set_refuses_a_racing_writer(tmp_path, vault_env, mount_prefix):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(tmp_path / "out")], vault_env)
    settings = load_config(cluster).service_account
    gateway = VaultGateway.from_env(vault_env)
    stored = sa_ops.read_key_set(gateway, settings)
    staged = sa.stage(stored.keys, sa.new_key(rsa.generate_private_key(65537, 2048), datetime.now(timezone.utc)),
                      datetime.now(timezone.utc))
    gateway.kv2_write(settings.kv_mount, settings.kv_path, sa.to_document(staged), cas=stored.version)
    with pytest.raises(PlanRefused, match="changed in Vault while this command ran"):
        gateway.kv2_write(settings.kv_mount, settings.kv_path, sa.to_document(staged), cas=stored.version)


def test_bootstrap_refuses_a_non_kv_mount(tmp_path, vault_env, mount_prefix, openbao):
    client = hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))
    client.sys.enable_secrets_engine("kv", path=f"{mount_prefix}vaultk8s", options={"version": "1"})
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(tmp_path / "out")], vault_env, check=False)
    _one_line_error(result, 6, "KV version 1")


# --- retire destroys the old versions that still hold the retired private key --------------------

def _history(env, mount, path):
    """Every version Vault can still serve, as {version: raw JSON text}, plus the metadata."""
    token = env["VAULT_TOKEN"]
    meta = policy_helpers.call(env, token, "GET", f"{mount}/metadata/{path}")
    assert meta.status_code == 200, meta.text
    meta = meta.json()["data"]
    texts = {}
    for version in range(1, meta["current_version"] + 1):
        resp = policy_helpers.call(env, token, "GET", f"{mount}/data/{path}?version={version}")
        if resp.status_code == 200 and (resp.json().get("data") or {}).get("data"):
            texts[version] = resp.text
    return meta, texts


def _rotate_fully(rotate):
    """stage -> promote -> retire --force; returns the ids of the key retired and the key now active."""
    for phase in ("stage", "promote"):
        rotate(phase)
    return rotate("retire", "--force")


def _assert_only_active_private_key(env, mount, path, retired_id, active_key_pem):
    meta, texts = _history(env, mount, path)
    current = meta["current_version"]
    assert list(texts) == [current], f"older versions still readable: {sorted(texts)}"
    for version, info in meta["versions"].items():
        if int(version) < current:
            assert info["destroyed"], version
    doc = json.loads(texts[current])["data"]["data"]
    by_id = {k["id"]: k for k in doc["keys"]}
    assert "private_pem" not in by_id[retired_id] and by_id[retired_id]["state"] == "retired"
    active = [k for k in doc["keys"] if k["state"] == "active"]
    assert len(active) == 1 and active[0]["private_pem"].encode() == active_key_pem
    assert texts[current].count("PRIVATE KEY-----") == 2  # BEGIN and END of the active key, nothing else
    return meta


def test_retire_destroys_old_versions_holding_the_retired_private_key(tmp_path, vault_env, mount_prefix):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    mount, path = f"{mount_prefix}vaultk8s", "it/service-account"
    meta, _ = _history(vault_env, mount, path)
    assert meta["max_versions"] == sa.KV_MAX_VERSIONS
    old_id = sa.jwt_kid(serialization.load_pem_private_key(_files(out)[0], None).public_key())

    results = []
    retired = _rotate_fully(lambda phase, *extra: results.append(_rotate(cluster, out, vault_env, phase, *extra))
                            or results[-1])
    assert "did: destroy-kv-versions" in retired.stdout
    _assert_no_secret(*results)
    meta = _assert_only_active_private_key(vault_env, mount, path, old_id, _files(out)[0])
    assert meta["current_version"] == 4

    before = tree_state(out)
    again = _rotate(cluster, out, vault_env, "retire", "--force")
    assert "already done" in again.stdout and "destroy" not in again.stdout
    assert _history(vault_env, mount, path)[0] == meta and tree_state(out) == before

    # a second rotation: the first one's active key is the one retired now
    second_id = sa.jwt_kid(serialization.load_pem_private_key(_files(out)[0], None).public_key())
    _rotate_fully(lambda phase, *extra: _rotate(cluster, out, vault_env, phase, *extra))
    meta = _assert_only_active_private_key(vault_env, mount, path, second_id, _files(out)[0])
    assert meta["current_version"] == 7


def test_a_failed_destroy_is_finished_by_rerunning_retire(tmp_path, vault_env, mount_prefix, monkeypatch):
    cluster = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    old_id = sa.jwt_kid(serialization.load_pem_private_key(_files(out)[0], None).public_key())
    _rotate(cluster, out, vault_env, "stage")
    _rotate(cluster, out, vault_env, "promote")
    config = load_config(cluster)
    gateway = VaultGateway.from_env(vault_env)

    def refuse(*args, **kwargs):
        raise VaultError("Vault refused to destroy versions of x: injected")

    with monkeypatch.context() as patch:
        patch.setattr(gateway, "kv2_destroy", refuse)
        with pytest.raises(VaultError) as err:
            sa_ops.rotate(config, out, gateway, sa.SARotationPhase.RETIRE, now=datetime.now(timezone.utc), force=True)
    message = str(err.value)
    assert "\n" not in message and "PRIVATE" not in message
    assert "node files written" in message and "re-run `vaultk8s sa rotate --phase retire`" in message
    assert _files(out)[1].count(b"BEGIN PUBLIC KEY") == 1  # the retire itself took effect
    mount, path = f"{mount_prefix}vaultk8s", "it/service-account"
    assert len(_history(vault_env, mount, path)[1]) > 1  # old versions (the retired key) still there

    report = sa_ops.rotate(config, out, gateway, sa.SARotationPhase.RETIRE, now=datetime.now(timezone.utc))
    assert report.changed and report.destroyed_versions == (2, 3)
    _assert_only_active_private_key(vault_env, mount, path, old_id, _files(out)[0])


def test_operator_token_can_rotate_and_destroy_but_nothing_broader(tmp_path, vault_env, mount_prefix):
    path, config, operator = policy_helpers.applied_cluster(vault_env, tmp_path, mount_prefix)
    out = tmp_path / "out"
    mount, secret = f"{mount_prefix}vaultk8s", "pol/service-account"
    meta, _ = _history(vault_env, mount, secret)
    assert meta["max_versions"] == sa.KV_MAX_VERSIONS  # bootstrap ran with the operator token
    old_id = sa.jwt_kid(serialization.load_pem_private_key(_files(out)[0], None).public_key())

    def rotate(phase, *extra):
        result = policy_helpers.cli(vault_env, "sa", "rotate", "-c", str(path), "-o", str(out), "--phase", phase,
                                    *extra, token=operator)
        assert result.returncode == 0, result.stderr
        return result

    assert "destroy-kv-versions" in _rotate_fully(rotate).stdout
    _assert_only_active_private_key(vault_env, mount, secret, old_id, _files(out)[0])
    assert "already done" in rotate("retire").stdout

    # nothing beyond this one secret: no metadata delete (would drop the current key), no undelete,
    # no destroy or metadata on another path of the mount
    call = policy_helpers.call
    assert call(vault_env, operator, "DELETE", f"{mount}/metadata/{secret}").status_code == 403
    assert call(vault_env, operator, "POST", f"{mount}/undelete/{secret}", {"versions": [1]}).status_code == 403
    assert call(vault_env, operator, "POST", f"{mount}/destroy/other/service-account", {"versions": [1]}).status_code == 403
    assert call(vault_env, operator, "GET", f"{mount}/metadata/other/service-account").status_code == 403
    assert call(vault_env, operator, "LIST", f"{mount}/metadata/").status_code == 403
