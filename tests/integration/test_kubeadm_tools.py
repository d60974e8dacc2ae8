"""kubeadm's own tools on a vaultk8s tree: with `kubeconfigs.embed_client_certs: true` every kubeconfig
embeds its client certificate, so the real kubeadm v1.24 (`certs check-expiration`, `init phase
kubeconfig all`) accepts the tree, before and after the agent renews it, and the API server
accepts the rewritten kubeconfigs."""

from __future__ import annotations

import base64
import sys

import pytest
import yaml

from tests.helpers.kube import kubeadm, kubeadm_config, running_control_plane
from tests.helpers.nodes import tree_state
from tests.helpers.policy import CLUSTER, applied_cluster, cli
from vaultk8s import crypto

pytestmark = pytest.mark.integration

EMBED = {"kubeconfigs": {"embed_client_certs": True}}
CHECKED = ("admin.conf", "apiserver", "apiserver-etcd-client", "apiserver-kubelet-client", "controller-manager.conf",
           "etcd-healthcheck-client", "etcd-peer", "etcd-server", "front-proxy-client", "scheduler.conf")


def _embedded_cert(conf):
    user = yaml.safe_load(conf.read_text())["users"][0]["user"]
    assert "client-certificate" not in user and "client-key" not in user
    return crypto.load_certs(base64.b64decode(user["client-certificate-data"]))[0]


def _check_expiration(node_dir, tmp_path):
    result = kubeadm(node_dir, tmp_path / "kubeadm-scratch", "certs", "check-expiration",
                     "--config", str(tmp_path / "kubeadm.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    for name in CHECKED:
        assert rows[name].rstrip().endswith("yes"), rows[name]  # externally managed: no CA key on disk
    for ca in ("ca", "etcd-ca", "front-proxy-ca"):
        assert rows[ca].rstrip().endswith("yes")
    return result.stdout


def test_kubeadm_accepts_the_kubeadm_shaped_tree_and_the_agents_renewal(vault_env, tmp_path, mount_prefix):
    path, _, _ = applied_cluster(vault_env, tmp_path, mount_prefix, **EMBED)
    (tmp_path / "kubeadm.yaml").write_text(kubeadm_config({**CLUSTER, **EMBED}))
    node_dir = tmp_path / "out" / "cp-1"
    for conf in ("admin.conf", "controller-manager.conf", "scheduler.conf", "kubelet.conf", "kube-proxy.conf"):
        _embedded_cert(node_dir / conf)
    before = tree_state(node_dir)

    _check_expiration(node_dir, tmp_path)
    phase = kubeadm(node_dir, tmp_path / "kubeadm-scratch-2", "init", "phase", "kubeconfig", "all",
                    "--config", str(tmp_path / "kubeadm.yaml"))
    assert phase.returncode == 0, phase.stdout + phase.stderr
    for conf in ("admin.conf", "kubelet.conf", "controller-manager.conf", "scheduler.conf"):
        assert f"External CA mode: Using user provided {conf}" in phase.stdout
    assert "unexpected API Server URL" not in phase.stderr and "wrong CA" not in phase.stderr
    assert tree_state(node_dir) == before  # kubeadm only read the tree

    # The agent renews cp-1 and rewrites each embedded kubeconfig; the hook learns what to restart.
    creds = tmp_path / "creds-cp-1"
    assert cli(vault_env, "node", "credentials", "-c", str(path), "--node", "cp-1", "--out", str(creds)).returncode == 0
    seen = tmp_path / "restart"
    hook = f"{sys.executable} -c \"import os; open('{seen}', 'w').write(os.environ['VAULTK8S_RESTART'])\""
    env = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    old = _embedded_cert(node_dir / "controller-manager.conf").serial_number
    renewed = cli(env, "agent", "-c", str(path), "--node", "cp-1", "--out", str(tmp_path / "out"),
                  "--credentials", str(creds), "--once", "--force", "--exec", hook)
    assert renewed.returncode == 0, renewed.stderr
    assert seen.read_text() == "kube-controller-manager kube-scheduler kubelet kube-proxy"
    for conf, cert in (("controller-manager.conf", "controller-manager.crt"), ("scheduler.conf", "scheduler.crt"),
                       ("kubelet.conf", "kubelet-client.crt")):
        on_disk = crypto.load_certs((node_dir / "pki" / cert).read_bytes())[0]
        assert _embedded_cert(node_dir / conf) == on_disk
        assert (node_dir / conf).stat().st_mode & 0o777 == 0o600
    assert _embedded_cert(node_dir / "controller-manager.conf").serial_number != old
    _check_expiration(node_dir, tmp_path)  # still accepted after the rewrite

    again = cli(vault_env, "bootstrap", "-c", str(path), "-o", str(tmp_path / "out"))
    assert again.returncode == 0, again.stderr
    assert "write-file" not in again.stdout  # the agent's rewrite is what bootstrap wants too

    # bootstrap's own renewal rewrites the embedded copies the same way.
    forced = cli(vault_env, "bootstrap", "-c", str(path), "-o", str(tmp_path / "out"), "--force-renew")
    assert forced.returncode == 0, forced.stderr
    assert "cp-1/scheduler.conf  (client certificate re-issued)" in forced.stdout
    assert _embedded_cert(node_dir / "scheduler.conf") == crypto.load_certs(
        (node_dir / "pki" / "scheduler.crt").read_bytes())[0]
    _check_expiration(node_dir, tmp_path)


def test_embedded_kubeconfigs_authenticate_against_a_real_apiserver(vault_env, tmp_path, mount_prefix):
    with running_control_plane(tmp_path, vault_env, mount_prefix, workers=1, **EMBED) as plane:
        for node, conf, user in (("cp-1", "controller-manager.conf", "system:kube-controller-manager"),
                                 ("cp-1", "scheduler.conf", "system:kube-scheduler"),
                                 ("worker-1", "kubelet.conf", "system:node:worker-1"),
                                 ("worker-1", "kube-proxy.conf", "system:kube-proxy")):
            kubeconfig = plane.out / node / conf
            _embedded_cert(kubeconfig)
            result = plane.kubectl("get", "--raw=/vaultk8s-probe", kubeconfig=kubeconfig, check=False)
            assert f'User "{user}"' in result.stderr, result.stderr  # authenticated, then refused
        assert "kube-system" in plane.kubectl("get", "namespaces", "-o", "name").stdout
