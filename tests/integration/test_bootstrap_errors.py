"""Bad input and broken Vault: one line naming the problem, a non-zero exit, nothing half-written."""

from __future__ import annotations

import hvac
import pytest

from tests.helpers.cluster import cluster_doc, run_cli, write_cluster

pytestmark = pytest.mark.integration


def _one_line_error(proc) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def cluster(tmp_path, mount_prefix):
    return write_cluster(tmp_path / "cluster.yaml", cluster_doc(mount_prefix))


def _mounts(openbao, prefix: str) -> list[str]:
    client = hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))
    return [m for m in client.sys.list_mounted_secrets_engines()["data"] if m.startswith(prefix)]


def test_invalid_cluster_file_lists_every_problem(tmp_path, vault_env):
    doc = cluster_doc("")
    doc["cluster"]["name"] = "Demo_Cluster"
    doc["cluster"]["service_cidr"] = "10.96.0.0/33"
    doc["pki"]["leaf_ttl"] = "100000h"
    doc["nodes"]["workers"].append({"name": "worker-1", "ips": ["10.0.0.11"]})
    path = write_cluster(tmp_path / "bad.yaml", doc)
    out = tmp_path / "out"
    proc = run_cli("bootstrap", "--config", str(path), "--out", str(out), env=vault_env)
    line = _one_line_error(proc)
    assert proc.returncode == 2
    for fragment in ("cluster.name", "service_cidr", "leaf_ttl must be shorter", "'worker-1' appears more than once",
                     "IP 10.0.0.11 is given to both"):
        assert fragment in line
    assert not out.exists()


def test_not_yaml(tmp_path, vault_env):
    path = tmp_path / "x.yaml"
    path.write_text("cluster: [unclosed\n")
    line = _one_line_error(run_cli("bootstrap", "--config", str(path), "--out", str(tmp_path / "o"), env=vault_env))
    assert "not valid YAML" in line


def test_unreachable_vault(cluster, tmp_path):
    env = {"VAULT_ADDR": "https://127.0.0.1:1", "VAULT_TOKEN": "x"}
    line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(tmp_path / "o"), env=env))
    assert "cannot reach Vault at https://127.0.0.1:1" in line


def test_missing_vault_addr(cluster, tmp_path):
    line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(tmp_path / "o"), env={}))
    assert "VAULT_ADDR is not set" in line


def test_wrong_token_is_403_and_secret_free(cluster, tmp_path, vault_env, openbao, mount_prefix):
    env = dict(vault_env, VAULT_TOKEN="s.not-a-real-token-0123456789")
    proc = run_cli("bootstrap", "--config", str(cluster), "--out", str(tmp_path / "o"), env=env)
    line = _one_line_error(proc)
    assert "403" in line and "not-a-real-token" not in proc.stderr + proc.stdout
    assert openbao.token not in proc.stderr + proc.stdout
    assert _mounts(openbao, mount_prefix) == []


def test_untrusted_tls(cluster, tmp_path, vault_env):
    env = {k: v for k, v in vault_env.items() if k != "VAULT_CACERT"}
    line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(tmp_path / "o"), env=env))
    assert "VAULT_CACERT" in line


def test_mount_path_taken_by_another_engine(cluster, tmp_path, vault_env, openbao, mount_prefix):
    client = hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))
    client.sys.enable_secrets_engine("kv", path=f"{mount_prefix}etcd-ca", options={"version": "2"})
    out = tmp_path / "o"
    line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(out), env=vault_env))
    assert f"{mount_prefix}etcd-ca/ is already a 'kv' engine" in line
    assert not list(out.glob("*/pki"))


def test_unwritable_out_dir_fails_before_vault(cluster, tmp_path, vault_env, openbao, mount_prefix):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(blocker / "out"), env=vault_env))
    assert "cannot write to" in line and "is not a directory" in line
    assert _mounts(openbao, mount_prefix) == []


def test_unreachable_vault_creates_no_out_dir(cluster, tmp_path, free_port):
    """Vault is probed before the output directory is made (or an existing one's mode changed)."""
    out, existing = tmp_path / "new-out", tmp_path / "existing"
    existing.mkdir(mode=0o755)
    existing.chmod(0o755)
    env = {"VAULT_ADDR": f"https://127.0.0.1:{free_port()}", "VAULT_TOKEN": "x"}
    for target in (out, existing):
        line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(target), env=env))
        assert "cannot reach Vault" in line
    assert not out.exists()
    assert existing.stat().st_mode & 0o777 == 0o755 and not list(existing.iterdir())


def test_bad_flag_is_a_usage_error(cluster):
    proc = run_cli("bootstrap", "--config", str(cluster), "--out", "o", "--output", "yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_sealed_vault(cluster, tmp_path, free_port):
    from vaultk8s.dev import DevServer

    server = DevServer(tmp_path / "sealed", port=free_port())
    env = server.up()
    try:
        client = hvac.Client(url=env.addr, token=env.token, verify=str(env.cacert))
        client.sys.seal()
        line = _one_line_error(run_cli("bootstrap", "--config", str(cluster), "--out", str(tmp_path / "o"),
                                       env=env.as_environ()))
        assert "is sealed" in line
    finally:
        server.down()


def test_mounts_left_without_a_ca_are_finished_not_waited_on(tmp_path, openbao, vault_env, mount_prefix, cluster):
    """A run stopped between enabling the mounts and making the roots: OpenBao answers "no default
    issuer" with a 500, which is an answer; taking it for a fault made each CA wait out the 45 s
    failover budget (133 s for three), so the re-run gets far less than that."""
    client = hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))
    for ca in ("kubernetes-ca", "etcd-ca", "front-proxy-ca"):
        client.sys.enable_secrets_engine("pki", path=f"{mount_prefix}{ca}")
    proc = run_cli("bootstrap", "--config", str(cluster), "--out", str(tmp_path / "o"), env=vault_env, timeout=40)
    assert proc.returncode == 0, proc.stderr
    for ca in ("kubernetes-ca", "etcd-ca", "front-proxy-ca"):
        assert client.read(f"{mount_prefix}{ca}/issuer/default")["data"]["issuer_name"]
