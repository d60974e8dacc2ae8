"""CA rotation against a real OpenBao, for each of the three CAs: stage, switch and retire, their
re-runs, their refusals, `ca status`, bootstrap after switch, and every chain checked by openssl."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from tests.helpers import policy as policy_helpers
from tests.helpers.cluster import openssl_verify
from tests.helpers.hsm import hsm_section, init_dev_token, needs_softhsm, token_environ
from tests.helpers.nodes import run_cli, tree_state, write_cluster
from vaultk8s import catalog, crypto
from vaultk8s.config import load_config
from vaultk8s.errors import VaultError
from vaultk8s.hsm import HsmRootAuthority, open_token
from vaultk8s.ops import ca_rotation as ops
from vaultk8s.ops.renew import renew_node
from vaultk8s.plan.ca_rotation import CARotationPhase
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.store.atomic import public, secret
from vaultk8s.store.layout import NodeOutput
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

CONTROL_PLANE = [("cp-1", "10.0.0.11")]
WORKERS = [("worker-1", "10.0.1.1")]
SERVING = {"apiserver", "kubelet-serving", "etcd-server", "etcd-peer"}


@pytest.fixture
def cluster(tmp_path, vault_env, mount_prefix):
    path = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE, WORKERS)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(path), "-o", str(out)], vault_env)
    return path, out


def _rotate(cluster, vault_env, ca: str, phase: str, *extra: str, check: bool = True):
    path, out = cluster
    return run_cli(["ca", "rotate", "-c", str(path), "-o", str(out), "--ca", ca, "--phase", phase, *extra],
                   vault_env, check=check)


def _rotate_json(cluster, vault_env, ca: str, phase: str) -> dict:
    return json.loads(_rotate(cluster, vault_env, ca, phase, "--output", "json").stdout)


def _status(cluster, vault_env, ca: str) -> dict:
    path, out = cluster
    result = run_cli(["ca", "status", "-c", str(path), "-o", str(out), "--output", "json"], vault_env)
    return next(c for c in json.loads(result.stdout) if c["ca"] == ca)


def _leaf_files(out: Path, ca: str) -> list[tuple[str, Path]]:
    config = load_config(out.parent / "cluster.yaml")
    return [(rc.spec.name, out / rc.node / "pki" / rc.cert_file) for rc in resolve_all(config) if rc.spec.ca == ca]


def _bundle_files(out: Path, ca: str) -> list[Path]:
    spec = catalog.ca(ca)
    nodes = [n for n, _ in CONTROL_PLANE] + ([n for n, _ in WORKERS] if ca == "kubernetes-ca" else [])
    return [out / n / "pki" / spec.cert_file for n in nodes]


def _roots(path: Path) -> list[str]:
    return sorted(crypto.fingerprint(c) for c in crypto.load_certs(path.read_bytes()))


def _kubeconfig_cas(out: Path) -> set[tuple[str, ...]]:
    found = set()
    for conf in out.glob("*/*.conf"):
        doc = yaml.safe_load(conf.read_text())
        data = base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"])
        found.add(tuple(sorted(crypto.fingerprint(c) for c in crypto.load_certs(data))))
    return found


def _write_pem(path: Path, certs) -> Path:
    path.write_bytes(b"".join(crypto.cert_pem(c) for c in certs))
    return path


@pytest.mark.parametrize("ca", [c.name for c in catalog.CAS])
def test_rotation_phases(cluster, vault_env, tmp_path, ca):
    path, out = cluster
    config = load_config(path)
    gateway = VaultGateway.from_env(vault_env)
    mount = config.mount(ca)
    leaves = _leaf_files(out, ca)
    (old_root,) = crypto.load_certs(_bundle_files(out, ca)[0].read_bytes())
    old_pem = _write_pem(tmp_path / "old-root.pem", [old_root])

    # Out of order: one line, exit 6, nothing written.
    before = tree_state(out)
    for phase, words in (("retire", "nothing to retire"), ("switch", "nothing staged")):
        refused = _rotate(cluster, vault_env, ca, phase, check=False)
        assert refused.returncode == 6 and words in refused.stderr and "Traceback" not in refused.stderr
    dry = _rotate(cluster, vault_env, ca, "stage", "--dry-run")
    assert "would: generate-root" in dry.stdout
    assert tree_state(out) == before and _status(cluster, vault_env, ca)["state"] == "idle"

    # stage: every bundle (and kubeconfig CA) holds old + new; leaves untouched.
    leaf_bytes = {name: p.read_bytes() for name, p in leaves}
    report = _rotate_json(cluster, vault_env, ca, "stage")
    assert report["state_after"] == "staged" and report["changed"]
    new_root = next(c for c in crypto.load_certs(_bundle_files(out, ca)[0].read_bytes())
                    if crypto.fingerprint(c) != crypto.fingerprint(old_root))
    new_pem = _write_pem(tmp_path / "new-root.pem", [new_root])
    both = sorted([crypto.fingerprint(old_root), crypto.fingerprint(new_root)])
    assert all(_roots(b) == both for b in _bundle_files(out, ca))
    if ca == "kubernetes-ca":
        assert _kubeconfig_cas(out) == {tuple(both)}
    assert {name: p.read_bytes() for name, p in leaves} == leaf_bytes
    # A node's agent reads the same default chain: it keeps old + new and renews nothing.
    agent = renew_node(config, "cp-1", NodeOutput(out, "cp-1"), gateway, now=datetime.now(timezone.utc))
    assert agent.renewed == []
    staged = tree_state(out)
    assert not _rotate_json(cluster, vault_env, ca, "stage")["changed"] and tree_state(out) == staged
    refused = _rotate(cluster, vault_env, ca, "retire", check=False)
    assert refused.returncode == 6 and "not switched yet" in refused.stderr
    assert _status(cluster, vault_env, ca)["state"] == "staged"

    # Keep one old leaf to put back after switch: retire must then refuse, naming it.
    kept_name, kept_path = leaves[0]
    kept = (kept_path.read_bytes(), kept_path.with_suffix(".key").read_bytes())

    # switch: every leaf from the new root; serving certs carry the cross-signed chain, so a
    # client trusting only the old root still accepts them; a client trusting the new one too.
    report = _rotate_json(cluster, vault_env, ca, "switch")
    assert report["state_after"] == "switched"
    assert {a["target"] for a in report["actions"] if a["kind"] == "issue"} >= {
        str(p.relative_to(out)) for _, p in leaves}
    for name, leaf in leaves:
        chain = crypto.load_certs(leaf.read_bytes())
        assert crypto.signed_by(chain[0], new_root), name
        for anchor in (new_pem, old_pem) if name in SERVING else (new_pem,):
            result = openssl_verify(anchor, leaf)
            assert result.returncode == 0, (name, anchor.name, result.stdout + result.stderr)
        if name in SERVING:
            assert len(chain) == 2 and crypto.signed_by(chain[1], old_root), name
    assert all(_roots(b) == both for b in _bundle_files(out, ca))
    switched = tree_state(out)
    assert not _rotate_json(cluster, vault_env, ca, "switch")["changed"] and tree_state(out) == switched
    assert "no changes" in run_cli(["bootstrap", "-c", str(path), "-o", str(out)], vault_env).stdout
    refused = _rotate(cluster, vault_env, ca, "stage", check=False)
    assert refused.returncode == 6 and "retire" in refused.stderr

    # A leaf still from the old root: status counts it, retire refuses and names it.
    node, _, rel = str(kept_path.relative_to(out)).partition("/pki/")
    NodeOutput(out, node).update_pki({rel: public(kept[0]), rel.removesuffix(".crt") + ".key": secret(kept[1])})
    issuers = {i["role"]: i for i in _status(cluster, vault_env, ca)["issuers"]}
    assert issuers["old"]["leaves"] == 1 and issuers["current"]["leaves"] == len(leaves) - 1
    before = tree_state(out)
    refused = _rotate(cluster, vault_env, ca, "retire", check=False)
    assert refused.returncode == 6 and f"{node}/pki/{rel}" in refused.stderr and "1 certificate(s)" in refused.stderr
    assert tree_state(out) == before
    # bootstrap after switch re-issues exactly that leaf
    redo = run_cli(["bootstrap", "-c", str(path), "-o", str(out), "--output", "json"], vault_env)
    assert [a["target"] for a in json.loads(redo.stdout)["actions"] if a["kind"] == "issue"] == [f"{node}/pki/{rel}"]

    # retire: bundles hold the new root alone; the old root no longer signs; re-runs are no-ops.
    report = _rotate_json(cluster, vault_env, ca, "retire")
    assert report["state_after"] == "idle" and not report["stranded"]
    assert all(_roots(b) == [crypto.fingerprint(new_root)] for b in _bundle_files(out, ca))
    if ca == "kubernetes-ca":
        assert _kubeconfig_cas(out) == {(crypto.fingerprint(new_root),)}
    for name, leaf in leaves:
        assert openssl_verify(_bundle_files(out, ca)[0], leaf).returncode == 0, name
    check = run_cli(["certs", "check", "--out", str(out)], vault_env, check=False)
    assert check.returncode == 0, check.stdout + check.stderr  # leaf + cross-signed cert: still fine
    old_leaf = _write_pem(tmp_path / "old-leaf.pem", crypto.load_certs(kept[0]))
    assert openssl_verify(_bundle_files(out, ca)[0], old_leaf).returncode != 0
    rows = _status(cluster, vault_env, ca)["issuers"]
    assert sorted(r["role"] for r in rows) == ["current", "retired"]
    retired = next(r for r in rows if r["role"] == "retired")
    assert not retired["issuing"] and retired["name"].startswith("retired-g1-until-")
    role = catalog.cert(kept_name).role_for(node)
    with pytest.raises(VaultError, match="issuing"):
        gateway.write(f"{mount}/issuer/{retired['id']}/issue/{role}", {"common_name": "x"})
    done = tree_state(out)
    for phase in ("retire", "switch"):
        assert not _rotate_json(cluster, vault_env, ca, phase)["changed"]
    assert "no changes" in run_cli(["bootstrap", "-c", str(path), "-o", str(out)], vault_env).stdout
    assert tree_state(out) == done

    # A later run, after the last leaf of the old root expired, deletes it (and its key).
    later = datetime.now(timezone.utc) + config.leaf_ttl + timedelta(hours=1)
    report = ops.rotate(config, out, gateway, ca, CARotationPhase.RETIRE, now=later)
    assert [a.kind for a in report.actions] == ["delete-issuer", "delete-key"]
    assert [i["role"] for i in _status(cluster, vault_env, ca)["issuers"]] == ["current"]


def test_retire_with_force_names_what_it_strands(cluster, vault_env):
    path, out = cluster
    ca = "front-proxy-ca"
    _rotate(cluster, vault_env, ca, "stage")
    (name, leaf), = _leaf_files(out, ca)
    kept = leaf.read_bytes(), leaf.with_suffix(".key").read_bytes()
    _rotate(cluster, vault_env, ca, "switch")
    NodeOutput(out, "cp-1").update_pki({leaf.name: public(kept[0]), leaf.with_suffix(".key").name: secret(kept[1])})
    forced = _rotate(cluster, vault_env, ca, "retire", "--force")
    assert "cp-1/pki/front-proxy-client.crt still chains to the retired root" in forced.stderr
    assert _status(cluster, vault_env, ca)["state"] == "idle"


def test_bad_input_is_one_line(cluster, vault_env, tmp_path):
    path, out = cluster
    bad = run_cli(["ca", "rotate", "-c", str(path), "-o", str(out), "--ca", "nope-ca", "--phase", "stage"],
                  vault_env, check=False)
    assert bad.returncode == 2 and "nope-ca" in bad.stderr and "Traceback" not in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_cli(["ca", "rotate", "-c", str(path), "-o", str(empty), "--ca", "etcd-ca", "--phase", "stage"],
                      vault_env, check=False)
    assert missing.returncode == 6 and "run `vaultk8s bootstrap` first" in missing.stderr
    assert _status(cluster, vault_env, "etcd-ca")["state"] == "idle"
    assert list(empty.iterdir()) == []


@needs_softhsm
def test_hsm_mode_rotation(tmp_path, vault_env, mount_prefix, monkeypatch):
    """Roots in the token: stage makes a new token root (non-extractable) and a new Vault
    intermediate; the old token root cross-signs the new one; leaves chain to either root."""
    ca = "front-proxy-ca"
    token = init_dev_token(tmp_path / "state")
    env = {**vault_env, **token_environ(token)}
    path = write_cluster(tmp_path, mount_prefix, CONTROL_PLANE, WORKERS, hsm=hsm_section("ec-p384"))
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(path), "-o", str(out)], env)
    cluster = (path, out)
    bundle, (_, leaf) = out / "cp-1/pki/front-proxy-ca.crt", _leaf_files(out, ca)[0]
    (old_root,) = crypto.load_certs(bundle.read_bytes())
    old_pem = _write_pem(tmp_path / "old-root.pem", [old_root])

    assert _rotate_json(cluster, env, ca, "stage")["state_after"] == "staged"
    assert not _rotate_json(cluster, env, ca, "stage")["changed"]
    roots = crypto.load_certs(bundle.read_bytes())
    assert len(roots) == 2 and all(crypto.is_self_signed(r) for r in roots)
    new_root = next(r for r in roots if crypto.fingerprint(r) != crypto.fingerprint(old_root))
    new_pem = _write_pem(tmp_path / "new-root.pem", [new_root])
    config = load_config(path)
    for name, value in token_environ(token).items():
        monkeypatch.setenv(name, value)  # open_token reads the PIN from the environment
    with open_token(config.hsm) as session:
        (status,) = HsmRootAuthority(session, "ec-p384", scope=config.hsm_scope).status((f"{ca}-g2",))
    assert status.key_found and status.sensitive and not status.extractable and status.never_extractable
    assert status.sha256_fingerprint.replace(":", "") == crypto.fingerprint(new_root)

    _rotate(cluster, env, ca, "switch")
    chain = crypto.load_certs(leaf.read_bytes())
    # leaf, the new intermediate, and the new root cross-signed by the old one
    assert len(chain) == 3 and crypto.signed_by(chain[1], new_root) and crypto.signed_by(chain[2], old_root)
    for anchor in (old_pem, new_pem):
        result = openssl_verify(anchor, leaf)
        assert result.returncode == 0, (anchor.name, result.stdout + result.stderr)
    assert not _rotate_json(cluster, env, ca, "switch")["changed"]
    assert "no changes" in run_cli(["bootstrap", "-c", str(path), "-o", str(out)], env).stdout

    assert _rotate_json(cluster, env, ca, "retire")["state_after"] == "idle"
    assert _roots(bundle) == [crypto.fingerprint(new_root)]
    assert openssl_verify(bundle, leaf).returncode == 0
    assert not _rotate_json(cluster, env, ca, "retire")["changed"]
    assert "no changes" in run_cli(["bootstrap", "-c", str(path), "-o", str(out)], env).stdout


def test_operator_policy_is_enough_for_every_phase(tmp_path, vault_env, mount_prefix):
    """The reviewed operator policy grants what `ca rotate` and `ca status` call (no root token)."""
    path, _, operator = policy_helpers.applied_cluster(vault_env, tmp_path, mount_prefix)
    out = tmp_path / "out"
    for phase in ("stage", "switch", "retire"):
        result = policy_helpers.cli(vault_env, "ca", "rotate", "-c", str(path), "-o", str(out), "--ca", "etcd-ca",
                                    "--phase", phase, token=operator)
        assert result.returncode == 0, (phase, result.stderr)
    status = policy_helpers.cli(vault_env, "ca", "status", "-c", str(path), "-o", str(out), "--output", "json",
                                token=operator)
    assert status.returncode == 0, status.stderr
    etcd = next(c for c in json.loads(status.stdout) if c["ca"] == "etcd-ca")
    assert etcd["state"] == "idle" and sorted(i["role"] for i in etcd["issuers"]) == ["current", "retired"]
