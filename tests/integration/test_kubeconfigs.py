"""Kubeconfigs written by bootstrap, read back by the real kubectl."""

from __future__ import annotations

import base64
import json
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.nodes import run_cli, tree_state, write_cluster
from vaultk8s import catalog, crypto
from vaultk8s.catalog import NODE, Server

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
NODES = {"cp-1": ("10.0.0.11", True), "w-1": ("10.0.1.1", False)}


def _view(path: Path, *extra: str) -> dict:
    result = subprocess.run([KUBECTL, "config", "view", "--kubeconfig", str(path), "--raw", "-o", "json", *extra],
                            capture_output=True, text=True, timeout=30, cwd="/")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def bootstrapped(tmp_path, vault_env, mount_prefix):
    cluster = write_cluster(tmp_path, mount_prefix, [("cp-1", NODES["cp-1"][0])], [("w-1", NODES["w-1"][0])],
                            cluster={"name": "it", "endpoint": "https://api.it.example:6443", "apiserver_port": 7443})
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    return cluster, out


def test_kubectl_reads_every_kubeconfig(bootstrapped):
    _, out = bootstrapped
    assert KUBECTL, "kubectl not installed"
    for node, (ip, control_plane) in NODES.items():
        files = sorted(p.name for p in (out / node).glob("*.conf"))
        assert files == sorted(k.file for k in catalog.kubeconfigs_for(control_plane))
        for spec in catalog.kubeconfigs_for(control_plane):
            _check(out / node / spec.file, spec, node, ip)


def _check(path: Path, spec: catalog.KubeconfigSpec, node: str, ip: str):
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    view = _view(path)
    cluster = view["clusters"][0]["cluster"]
    ca_crt = (path.parent / "pki" / "ca.crt").read_bytes()
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca_crt
    want_server = f"https://{ip}:7443" if spec.server is Server.LOCAL else "https://api.it.example:6443"
    assert cluster["server"] == want_server
    user = view["users"][0]["user"]
    if spec.embed_cert:
        cert_pem = base64.b64decode(user["client-certificate-data"])
        key_pem = base64.b64decode(user["client-key-data"])
    else:
        assert not Path(user["client-certificate"]).is_absolute()
        cert_pem = (path.parent / user["client-certificate"]).read_bytes()
        key_pem = (path.parent / user["client-key"]).read_bytes()
        # --flatten reads the files from cwd=/: kubectl resolves them against the kubeconfig's directory.
        flat = _view(path, "--flatten")["users"][0]["user"]
        assert base64.b64decode(flat["client-certificate-data"]) == cert_pem
    cert = crypto.load_certs(cert_pem)[0]
    assert crypto.key_matches(cert, crypto.load_key(key_pem))
    assert crypto.signed_by(cert, crypto.load_cert(ca_crt))
    spec_cert = catalog.cert(spec.cert)
    facts = crypto.facts(cert)
    assert facts.common_name == spec_cert.common_name.replace(NODE, node)
    assert facts.organizations == ((spec_cert.organization,) if spec_cert.organization else ())
    assert view["users"][0]["name"] == facts.common_name


def test_rerun_keeps_everything(bootstrapped, vault_env):
    cluster, out = bootstrapped
    before = tree_state(out)
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    assert result.stdout.startswith("no changes")
    assert tree_state(out) == before


def test_force_renew_rewrites_only_embedded_configs(bootstrapped, vault_env):
    cluster, out = bootstrapped
    kubelet = (out / "cp-1" / "kubelet.conf").read_bytes()
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out), "--force-renew"], vault_env)
    rewritten = {line.split()[2] for line in result.stdout.splitlines() if line.startswith("did: write-file")}
    assert rewritten == {"cp-1/admin.conf", "cp-1/super-admin.conf"}
    assert "client certificate re-issued" in result.stdout
    assert (out / "cp-1" / "kubelet.conf").read_bytes() == kubelet
    admin = _view(out / "cp-1" / "admin.conf")["users"][0]["user"]
    assert base64.b64decode(admin["client-certificate-data"]) == (out / "cp-1" / "pki" / "admin.crt").read_bytes()


def test_changed_ca_is_reported_loudly(bootstrapped, vault_env):
    cluster, out = bootstrapped
    path = out / "w-1" / "kubelet.conf"
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(b"an old CA").decode()
    path.write_text(yaml.safe_dump(doc))
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    assert "w-1/kubelet.conf  (CA changed)" in result.stdout
    assert "WARNING: w-1/kubelet.conf now embeds a different cluster CA" in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_moved_api_server_rewrites_local_configs(bootstrapped, vault_env, tmp_path):
    cluster, out = bootstrapped
    data = yaml.safe_load(cluster.read_text())
    data["cluster"]["apiserver_port"] = 8443
    cluster.write_text(yaml.safe_dump(data))
    result = run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], vault_env)
    changed = sorted(line.split()[2] for line in result.stdout.splitlines() if "server changed" in line)
    assert changed == ["cp-1/controller-manager.conf", "cp-1/scheduler.conf"]
