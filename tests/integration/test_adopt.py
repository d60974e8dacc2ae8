"""`vaultk8s adopt` on a running cluster made by the real kubeadm v1.24 (issue 18).

The end-to-end test runs etcd + kube-apiserver on kubeadm's tree with request loops through
kubeadm's admin.conf (loaded before adoption) and a ServiceAccount token minted before it, then
goes `adopt --print-config` -> `adopt` -> in-place `bootstrap --out` -> `adopt --remove-ca-keys`:
no failed request, the API server not restarted and serving the Vault-issued certificate, no CA
key file left. The refusals share one kubeadm tree (no cluster running): each bad copy is refused
with one line and nothing is written, in Vault or on disk.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.helpers.adopt import CA_KEYS, adopt, adopt_in_place, assert_ok, derived_cluster
from tests.helpers.cluster import openssl_verify, run_cli, write_cluster
from tests.helpers.hsm import hsm_section, init_dev_token, needs_softhsm, token_environ
from tests.helpers.kube import kube_bin_dir
from tests.helpers.kubeadm_cluster import (HttpsProbe, cert_pem, fingerprint, issue, key_pem, kubeadm_cluster,
                                           kubeconfig_credentials, load_pair, make_kubeadm_tree, mint_token, new_ca,
                                           request_loops, served_certificate, standard_loops)
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

MOUNTS = ("kubernetes-ca", "etcd-ca", "front-proxy-ca")


def tree_state(tree: Path) -> dict[str, bytes]:
    return {str(p.relative_to(tree)): p.read_bytes() for p in sorted(tree.rglob("*")) if p.is_file()}


def test_adopt_then_in_place_bootstrap_then_remove_ca_keys_fails_no_request(vault_env, mount_prefix, tmp_path):
    with kubeadm_cluster(tmp_path) as plane:
        tree, pid = plane.node_dir, plane.apiserver.pid
        kubeadm_ca = fingerprint(load_pair(plane.pki, "ca")[0])
        token = mint_token(plane)
        cluster = derived_cluster(tree, tmp_path / "cluster.yaml", mount_prefix)
        admin, sa = standard_loops(plane, token)
        timings = {}
        with request_loops(admin, sa):
            admin.wait_requests(5)
            dry = adopt(cluster, tree, vault_env, "--dry-run", "--output", "json")
            assert dry.returncode == 0, dry.stderr
            kinds = [a["kind"] for a in json.loads(dry.stdout)["actions"]]
            assert kinds.count("import-ca") == 3 and "import-sa-key" in kinds, kinds
            assert VaultGateway.from_env(vault_env).mount_type(f"{mount_prefix}kubernetes-ca") is None

            started = time.monotonic()
            result = adopt(cluster, tree, vault_env)
            timings["adopt"] = time.monotonic() - started
            assert result.returncode == 0, result.stderr
            adopt_again = adopt(cluster, tree, vault_env)
            assert adopt_again.returncode == 0 and "no changes" in adopt_again.stdout, \
                adopt_again.stdout + adopt_again.stderr

            started = time.monotonic()
            boot = run_cli("bootstrap", "--config", str(cluster), "--out", str(plane.out), env=vault_env)
            timings["bootstrap"] = time.monotonic() - started
            assert boot.returncode == 0, boot.stderr[-2000:]
            new_serving = fingerprint(load_pair(plane.pki, "apiserver")[0])
            deadline = time.monotonic() + 30
            while fingerprint(served_certificate("127.0.0.1", plane.port)) != new_serving:
                assert time.monotonic() < deadline, "the API server still serves kubeadm's certificate"
                time.sleep(0.1)

            removed = adopt(cluster, tree, vault_env, "--remove-ca-keys")
            assert removed.returncode == 0, removed.stderr
            assert "still holds the CA keys" in removed.stderr
            time.sleep(2)
        for loop in (admin, sa):
            summary = loop.summary()
            assert summary.failed == 0 and summary.requests >= 20, str(summary)
        print(f"adopt {timings['adopt']:.1f}s, bootstrap {timings['bootstrap']:.1f}s, "
              f"loops {admin.summary()} / {sa.summary()}")

        assert plane.apiserver.pid == pid and plane.apiserver.poll() is None  # never restarted
        served = served_certificate("127.0.0.1", plane.port)
        assert served.issuer.rfc4514_string() == "CN=kubernetes"
        assert fingerprint(x509.load_pem_x509_certificate((plane.pki / "ca.crt").read_bytes())) == kubeadm_ca
        assert [k for k in CA_KEYS if (tree / k).exists()] == []
        leftovers = [p for p in tree.rglob("*.key") if p.name in ("ca.key", "front-proxy-ca.key")]
        assert leftovers == []  # not in any version directory either
        assert (tree / "pki/sa.key").exists()
        assert (tree / "pki/..data").is_symlink() and (tree / "pki/etcd").is_symlink()
        backup = tmp_path / "cp-1.before-vaultk8s.tar"
        assert backup.stat().st_mode & 0o777 == 0o600
        with tarfile.open(backup) as tar:
            assert set(CA_KEYS) | {"pki/sa.key", "admin.conf"} <= set(tar.getnames())
        removed_again = adopt(cluster, tree, vault_env, "--remove-ca-keys")
        assert removed_again.returncode == 0 and "no changes" in removed_again.stdout, \
            removed_again.stdout + removed_again.stderr
        assert plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"  # vaultk8s's admin.conf
        check = run_cli("certs", "check", "--out", str(plane.out))
        assert check.returncode == 0, check.stdout + check.stderr
        assert len(serial_zero_notes(cluster, vault_env)) == 3  # each adopted root, until `ca rotate`
        # kubeadm's CAs have serial number 0, and they stay the roots: no command prints cryptography's warning
        for run in (dry, result, adopt_again, boot, removed, removed_again, check):
            assert "Warning" not in run.stderr, run.stderr


@pytest.fixture
def kubeadm_tree(tmp_path) -> Path:
    kube_bin_dir()
    return make_kubeadm_tree(tmp_path / "kubeadm", 6443)


def bad_copy(tree: Path, where: Path) -> Path:
    copy = where / tree.name
    shutil.copytree(tree, copy, symlinks=True)
    return copy


def _swap_key(copy: Path) -> None:
    shutil.copy(copy / "pki/etcd/ca.key", copy / "pki/front-proxy-ca.key")


def _foreign_leaf(copy: Path) -> None:
    other, other_key = new_ca("kubernetes")
    cert, key = issue(other, other_key, "kube-apiserver-kubelet-client", client=True)
    (copy / "pki/apiserver-kubelet-client.crt").write_bytes(cert_pem(cert))
    (copy / "pki/apiserver-kubelet-client.key").write_bytes(key_pem(key))


def _no_sa_key(copy: Path) -> None:
    (copy / "pki/sa.key").unlink()


BAD_TREES = {
    "key does not match its certificate": (_swap_key, "pki/front-proxy-ca.key does not match pki/front-proxy-ca.crt"),
    "leaf from another CA": (_foreign_leaf, "pki/apiserver-kubelet-client.crt is not signed by pki/ca.crt"),
    "missing sa.key": (_no_sa_key, "pki/sa.key missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_TREES))
def test_bad_tree_is_refused_with_one_line_and_nothing_written(case, kubeadm_tree, vault_env, mount_prefix, tmp_path):
    cluster = derived_cluster(kubeadm_tree, tmp_path / "cluster.yaml", mount_prefix)
    break_it, expected = BAD_TREES[case]
    copy = bad_copy(kubeadm_tree, tmp_path / "bad")
    break_it(copy)
    _refused(cluster, copy, vault_env, mount_prefix, expected)


def test_a_bad_tree_is_named_before_vault_is_looked_at(kubeadm_tree, vault_env, mount_prefix, tmp_path):
    """No VAULT_ADDR at all: the tree's problem is still the one line, not the missing variable."""
    cluster = derived_cluster(kubeadm_tree, tmp_path / "cluster.yaml", mount_prefix)
    copy = bad_copy(kubeadm_tree, tmp_path / "bad")
    _no_sa_key(copy)
    result = adopt(cluster, copy, {})
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1 and "pki/sa.key missing" in lines[0], result.stderr


@pytest.mark.parametrize("change, expected", [
    ({"endpoint": "https://10.0.0.10:6443"}, "differs from admin.conf's server"),
    ({"service_cidr": "10.100.0.0/16"}, "first IP 10.100.0.1 is not in pki/apiserver.crt"),
    ({"domain": "corp.local"}, "pki/apiserver.crt names kubernetes.default.svc.cluster.local"),
])
def test_cluster_file_that_disagrees_with_the_tree_is_refused(change, expected, kubeadm_tree, vault_env,
                                                              mount_prefix, tmp_path):
    cluster = derived_cluster(kubeadm_tree, tmp_path / "cluster.yaml", mount_prefix, **change)
    _refused(cluster, kubeadm_tree, vault_env, mount_prefix, expected)


def test_directory_adopted_by_another_cluster_is_refused(kubeadm_tree, vault_env, mount_prefix, tmp_path):
    first = derived_cluster(kubeadm_tree, tmp_path / "first.yaml", mount_prefix)
    assert adopt(first, kubeadm_tree, vault_env).returncode == 0
    other = f"{mount_prefix.rstrip('/')}x/"
    second = derived_cluster(kubeadm_tree, tmp_path / "second.yaml", other, name="other")
    _refused(second, kubeadm_tree, vault_env, other, f"was adopted by cluster 'kube' (vault.mount_prefix '{mount_prefix}')")


def test_mount_holding_another_ca_is_refused(kubeadm_tree, vault_env, mount_prefix, tmp_path):
    """A second kubeadm cluster's directory, adopted into the first one's mounts."""
    cluster = derived_cluster(kubeadm_tree, tmp_path / "cluster.yaml", mount_prefix)
    assert adopt(cluster, kubeadm_tree, vault_env).returncode == 0
    second = make_kubeadm_tree(tmp_path / "second", 6443)
    before = tree_state(second)
    result = adopt(cluster, second, vault_env)
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{mount_prefix}kubernetes-ca already holds another CA" in result.stderr
    assert tree_state(second) == before and not (second.parent / "second.before-vaultk8s.tar").exists()


def _refused(cluster: Path, tree: Path, env: dict[str, str], prefix: str, expected: str) -> None:
    backup = tree.parent / f"{tree.name}.before-vaultk8s.tar"
    before = tree_state(tree), backup.read_bytes() if backup.exists() else None
    result = adopt(cluster, tree, env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert expected in lines[0], lines[0]
    assert "PRIVATE KEY" not in result.stderr + result.stdout
    assert (tree_state(tree), backup.read_bytes() if backup.exists() else None) == before
    gateway = VaultGateway.from_env(env)
    assert [m for m in MOUNTS if gateway.mount_type(f"{prefix}{m}")] == []


def status_with(plane, *, cert: bytes | None = None, key: bytes | None = None, token: str | None = None) -> int:
    """The HTTP status of GET /api with these credentials, trusting the CA the tree has now."""
    seen: list[int] = []
    HttpsProbe(plane.url, (plane.pki / "ca.crt").read_bytes(), cert_pem=cert, key_pem=key, token=token,
               expect=lambda status, body: seen.append(status))()
    return seen[0]


def test_rotating_every_ca_and_the_sa_key_of_an_adopted_cluster_ends_kubeadms_trust(vault_env, mount_prefix,
                                                                                   tmp_path):
    """After adoption: `ca rotate` of all three CAs and `sa rotate` through retire, with the restarts
    docs/adopt.md names (etcd after etcd-ca stage and retire, kube-apiserver after sa stage and
    retire). Then kubeadm's admin.conf and the pre-adoption token are refused, vaultk8s's work."""
    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        kubeadm_admin = kubeconfig_credentials(plane.admin_kubeconfig)
        cluster = derived_cluster(plane.node_dir, tmp_path / "cluster.yaml", mount_prefix)
        adopt_in_place(plane, cluster, vault_env)
        started = time.monotonic()
        for ca in MOUNTS:
            for phase in ("stage", "switch", "retire"):
                assert_ok(run_cli("ca", "rotate", "--config", str(cluster), "--out", str(plane.out), "--ca", ca,
                                  "--phase", phase, env=vault_env))
                if ca == "etcd-ca" and phase != "switch":
                    plane.restart_etcd()  # etcd reads its trusted CA only at start
                    plane.wait_ready()
        for phase in ("stage", "promote", "retire"):
            assert_ok(run_cli("sa", "rotate", "--config", str(cluster), "--out", str(plane.out), "--phase", phase,
                              "--force", env=vault_env))
            if phase != "promote":
                plane.restart_apiserver()  # --service-account-key-file is read at start
        print(f"rotations and restarts: {time.monotonic() - started:.1f}s")
        assert serial_zero_notes(cluster, vault_env) == []  # kubeadm's roots are retired
        assert status_with(plane, cert=kubeadm_admin["cert"], key=kubeadm_admin["key"]) == 401
        assert status_with(plane, token=token) == 401
        assert status_with(plane, token=mint_token(plane, name="after")) == 200
        assert plane.kubectl("auth", "can-i", "delete", "secrets", "-A").stdout.strip() == "yes"


def serial_zero_notes(cluster: Path, env: dict[str, str]) -> list[str]:
    """`vaultk8s status`'s notes on roots with serial number 0 (kubeadm's)."""
    result = run_cli("status", "--config", str(cluster), "--output", "json", env=env)
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr
    return [n for n in json.loads(result.stdout)["notes"] if "serial number 0" in n]


@needs_softhsm
def test_hsm_mode_adopt_keeps_kubeadms_roots_in_vault_until_ca_rotate_moves_them_to_token_roots(
        kubeadm_tree, vault_env, mount_prefix, tmp_path):
    """HSM mode: adopt imports kubeadm's roots into Vault; bootstrap keeps them (named `adopted`),
    and `ca rotate` of each CA makes a token root and a Vault intermediate under it, cross-signed
    by kubeadm's root, then retires kubeadm's root. Leaves verify against the old root after switch
    and against the token root alone after retire; bootstrap then finds each mount's default issuer
    signed by the token's root."""
    token = init_dev_token(tmp_path / "token")
    env = {**vault_env, **token_environ(token)}
    cluster = derived_cluster(kubeadm_tree, tmp_path / "cluster.yaml", mount_prefix)
    doc = yaml.safe_load(cluster.read_text())
    doc["hsm"] = hsm_section("ec-p256")
    write_cluster(cluster, doc)
    out = kubeadm_tree.parent
    assert_ok(adopt(cluster, kubeadm_tree, env))
    assert_ok(run_cli("bootstrap", "--config", str(cluster), "--out", str(out), env=env))
    assert_ok(adopt(cluster, kubeadm_tree, env, "--remove-ca-keys"))
    pki = kubeadm_tree / "pki"
    for ca, bundle, leaf in (("kubernetes-ca", "ca.crt", "apiserver.crt"), ("etcd-ca", "etcd/ca.crt", "etcd/server.crt"),
                             ("front-proxy-ca", "front-proxy-ca.crt", "front-proxy-client.crt")):
        kubeadm_root = tmp_path / f"{ca}-kubeadm.pem"
        kubeadm_root.write_bytes((pki / bundle).read_bytes())
        for phase in ("stage", "switch", "retire"):
            assert_ok(run_cli("ca", "rotate", "--config", str(cluster), "--out", str(out), "--ca", ca, "--phase", phase,
                              env=env))
            if phase == "switch":
                assert openssl_verify(kubeadm_root, pki / leaf).returncode == 0, ca  # old clients still accept it
        (root,) = x509.load_pem_x509_certificates((pki / bundle).read_bytes())
        assert root.subject.rfc4514_string() != "" and fingerprint(root) != fingerprint(
            x509.load_pem_x509_certificate(kubeadm_root.read_bytes()))
        assert openssl_verify(pki / bundle, pki / leaf).returncode == 0, ca
    again = run_cli("bootstrap", "--config", str(cluster), "--out", str(out), env=env)
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr


def test_an_adoption_interrupted_after_an_import_is_finished_by_a_rerun(kubeadm_tree, vault_env, mount_prefix,
                                                                        tmp_path):
    """The bundle of one CA already imported (unnamed), as a run killed right after the import leaves it."""
    cluster = derived_cluster(kubeadm_tree, tmp_path / "cluster.yaml", mount_prefix)
    gateway = VaultGateway.from_env(vault_env)
    mount = f"{mount_prefix}etcd-ca"
    gateway.enable_pki(mount, 3600, "interrupted adopt")
    pki = kubeadm_tree / "pki"
    gateway.import_issuer_bundle(mount, (pki / "etcd/ca.crt").read_text() + (pki / "etcd/ca.key").read_text())
    assert_ok(adopt(cluster, kubeadm_tree, vault_env))
    assert gateway.read_issuer(mount, "default")["issuer_name"] == "adopted"
    again = adopt(cluster, kubeadm_tree, vault_env)
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout + again.stderr
