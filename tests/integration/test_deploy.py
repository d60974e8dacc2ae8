"""deploy/ checked by the real tools: `systemd-analyze verify` must print nothing for every unit, the
unit's and the static pod's own agent command lines run one round against a real OpenBao, and every
manifest passes `kubectl apply --dry-run=server` on a real kube-apiserver (the RBAC for real too)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.ports import find_free_port
from tests.helpers.cluster import REPO
from tests.helpers.kube import running_control_plane
from tests.helpers.policy import applied_cluster, cli
from vaultk8s.config import parse_config

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"
UNITS = sorted(DEPLOY.glob("*.service"))
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
STATIC_POD = DEPLOY / "vaultk8s-agent.static-pod.yaml"
INSTALLED = "/usr/local/bin/vaultk8s"


def _unit_for_verify(unit: Path, tmp_path: Path) -> Path:
    """verify wants ExecStart's binary to exist: a copy naming the vaultk8s script installed here."""
    script = shutil.which("vaultk8s")
    assert script, "the vaultk8s console script is not installed (scripts/setup.sh installs it)"
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(INSTALLED, script))
    return copy


def _verify(unit: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: scripts/setup.sh installs systemd")
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def _unit_settings(unit: Path) -> dict[str, str]:
    text = unit.read_text().replace("\\\n", " ")
    return {k: v.strip() for k, v in re.findall(r"^(\w+)=(.*)$", text, re.M)}


def test_there_is_a_unit_and_the_manifests():
    assert [u.name for u in UNITS] == ["vaultk8s-agent.service"]
    assert STATIC_POD in MANIFESTS and len(MANIFESTS) >= 3


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_verifies_with_empty_output(unit, tmp_path):
    result = _verify(_unit_for_verify(unit, tmp_path))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stdout + result.stderr
    # The check is live: verify exits 0 on this parse error but says so, which fails the test above.
    broken = tmp_path / "broken" / unit.name
    broken.parent.mkdir()
    broken.write_text(_unit_for_verify(unit, tmp_path).read_text().replace("ProtectSystem=strict",
                                                                            "ProtectSystem=bogus"))
    said = _verify(broken)
    assert said.returncode == 0 and "Failed to parse protect system value" in said.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_is_hardened_and_ordered_before_the_kubelet(unit, tmp_path):
    settings = _unit_settings(unit)
    assert settings["Type"] == "notify" and settings["WatchdogSec"] and settings["Before"] == "kubelet.service"
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["ReadWritePaths"].split() == ["/etc/kubernetes", "/etc/vaultk8s/credentials"]
    assert settings["CapabilityBoundingSet"] == ""
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(_unit_for_verify(unit, tmp_path))],
                              capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout + security.stderr)
    assert level and float(level.group(1)) <= 3.0, security.stdout[-500:]  # systemd's scale: 0 safe, 10 exposed


def _relocated(argv: list[str], root: Path, port: int) -> list[str]:
    """The deployed command line with /etc under root and a free metrics port."""
    return [a.replace("/etc/", f"{root}/etc/").replace("127.0.0.1:9469", f"127.0.0.1:{port}") for a in argv]


def _install_node(out: Path, node: str, creds: Path, cluster_file: Path, root: Path) -> None:
    """What an operator puts on the node: its tree, its credentials and the cluster file."""
    shutil.copytree(out / node, root / "etc" / "kubernetes", symlinks=True)
    (root / "etc" / "kubernetes" / "manifests").mkdir()
    shutil.copytree(creds, root / "etc" / "vaultk8s" / "credentials")
    shutil.copy(cluster_file, root / "etc" / "vaultk8s" / "cluster.yaml")


def _unit_argv(unit: Path, node: str) -> list[str]:
    argv = shlex.split(_unit_settings(unit)["ExecStart"].replace("${VAULTK8S_NODE}", node))
    assert argv[0] == INSTALLED
    return argv[1:]


def _pod_argv(node: str) -> list[str]:
    container = yaml.safe_load(STATIC_POD.read_text())["spec"]["containers"][0]
    return [a.replace("$(NODE_NAME)", node) for a in container["command"][1:]]


@pytest.mark.parametrize("node, argv_of", [("worker-1", lambda n: _unit_argv(UNITS[0], n)), ("cp-1", _pod_argv)],
                         ids=["systemd-unit", "static-pod"])
def test_deployed_command_lines_run_a_round(vault_env, tmp_path, mount_prefix, node, argv_of):
    path, _, _ = applied_cluster(vault_env, tmp_path, mount_prefix)
    creds = tmp_path / f"creds-{node}"
    assert cli(vault_env, "node", "credentials", "-c", str(path), "--node", node, "--out", str(creds)).returncode == 0
    root = tmp_path / "host"
    _install_node(tmp_path / "out", node, creds, path, root)
    env = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}  # the node's credential only
    argv = _relocated(argv_of(node), root, find_free_port())
    assert argv[0] == "agent"
    kept = cli(env, *argv, "--once")
    assert kept.returncode == 0, kept.stderr
    assert "renewed, " in kept.stdout


def test_cluster_file_configmap_holds_a_valid_cluster_file():
    doc = yaml.safe_load((DEPLOY / "vaultk8s-cluster.configmap.yaml").read_text())
    assert parse_config(yaml.safe_load(doc["data"]["cluster.yaml"])).name == "demo"


def test_static_pod_probes_and_host_mounts():
    pod = yaml.safe_load(STATIC_POD.read_text())
    container = pod["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    host = {v["name"]: v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v}
    writable = {host[m["name"]] for m in container["volumeMounts"] if m["name"] in host and not m.get("readOnly")}
    assert writable == {"/etc/kubernetes", "/etc/vaultk8s/credentials"}
    assert {m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")} >= {"/etc/kubernetes/manifests"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def _wait_for_default_service_account(plane) -> None:
    """Pods are admitted only once the controller-manager made kube-system's default ServiceAccount."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if plane.kubectl("-n", "kube-system", "get", "serviceaccount", "default", check=False).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError("kube-controller-manager never created kube-system/default")


def test_manifests_pass_server_side_dry_run_and_the_rbac_works(vault_env, tmp_path, mount_prefix):
    with running_control_plane(tmp_path, vault_env, mount_prefix, workers=1) as plane:
        plane.start_controller_manager()
        _wait_for_default_service_account(plane)
        for manifest in MANIFESTS:
            result = plane.kubectl("apply", "--dry-run=server", "-f", str(manifest), check=False)
            assert result.returncode == 0, f"{manifest.name}: {result.stderr}"
            assert "(server dry run)" in result.stdout
        for manifest in ("vaultk8s-rbac.yaml", "vaultk8s-cluster.configmap.yaml"):
            plane.kubectl("apply", "-f", str(DEPLOY / manifest))
        read = ("-n", "kube-system", "get", "configmap", "vaultk8s-cluster", "-o", "jsonpath={.data.cluster\\.yaml}")
        as_node = plane.kubectl(*read, kubeconfig=plane.out / "worker-1" / "kubelet.conf", check=False)
        assert as_node.returncode == 0, as_node.stderr
        assert parse_config(yaml.safe_load(as_node.stdout)).name == "demo"
        as_proxy = plane.kubectl(*read, kubeconfig=plane.out / "worker-1" / "kube-proxy.conf", check=False)
        assert as_proxy.returncode != 0 and "Forbidden" in as_proxy.stderr
