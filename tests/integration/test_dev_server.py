"""`vaultk8s dev ...` against a real OpenBao, driven the way a user drives it: `python -m vaultk8s`."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

from vaultk8s.dev import DevServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXPORT_LINES = re.compile(
    r"\Aexport VAULT_ADDR=https://127\.0\.0\.1:(\d+)\n"
    r"export VAULT_TOKEN=(\S+)\n"
    r"export VAULT_CACERT=(/\S+/ca\.pem)\n\Z"
)


@dataclass(frozen=True)
class Cli:
    home: Path

    def __call__(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(HOME=str(self.home), PYTHONPATH=str(ROOT))
        return subprocess.run(
            [sys.executable, "-m", "vaultk8s", *map(str, args)],
            env=env, capture_output=True, text=True, timeout=90, cwd=self.home,
        )


def parse_exports(stdout: str) -> tuple[int, str, Path]:
    match = EXPORT_LINES.match(stdout)
    assert match, f"not exactly three export lines: {stdout!r}"
    return int(match[1]), match[2], Path(match[3])


def client(stdout: str) -> hvac.Client:
    port, token, cacert = parse_exports(stdout)
    return hvac.Client(url=f"https://127.0.0.1:{port}", token=token, verify=str(cacert))


def status_pid(cli: Cli, state: Path) -> int:
    result = cli("dev", "status", "--state-dir", state)
    assert result.returncode == 0, result.stdout + result.stderr
    return int(re.search(r"^pid: (\d+)$", result.stdout, re.M)[1])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def cli(home: Path) -> Cli:
    return Cli(home)


@pytest.fixture(scope="module")
def started(cli: Cli, tmp_path_factory: pytest.TempPathFactory, free_port):
    """One server started through the CLI for this module: (state dir, the `up` result)."""
    state = tmp_path_factory.mktemp("state") / "dev"
    result = cli("dev", "up", "--state-dir", state, "--port", free_port())
    try:
        yield state, result
    finally:
        DevServer(state).down()


def test_up_prints_only_the_export_lines(started):
    state, result = started
    assert result.returncode == 0, result.stderr
    port, token, cacert = parse_exports(result.stdout)
    assert cacert == state / "ca.pem"
    assert token not in result.stderr


def test_the_printed_token_works(started):
    assert client(started[1].stdout).is_authenticated()


def test_second_up_is_idempotent(cli, started):
    state, first = started
    pid = status_pid(cli, state)
    again = cli("dev", "up", "--state-dir", state)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert status_pid(cli, state) == pid


def test_env_prints_the_same_lines(cli, started):
    state, first = started
    assert cli("dev", "env", "--state-dir", state).stdout == first.stdout


def test_status_of_a_running_server(cli, started):
    state, _ = started
    result = cli("dev", "status", "--state-dir", state)
    assert result.returncode == 0
    assert "running: yes" in result.stdout and "sealed: no" in result.stdout


def test_state_is_private(started):
    state, _ = started
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("init.json", "ca.key", "server.key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name


def test_secrets_stay_out_of_logs_argv_and_home(cli, home, started):
    state, result = started
    _, token, _ = parse_exports(result.stdout)
    pid = status_pid(cli, state)
    assert token not in (state / "server.log").read_text()
    assert token.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert not (home / ".vault-token").exists()


def test_down_then_up_keeps_data(cli, tmp_path, free_port):
    state = tmp_path / "dev"
    first = cli("dev", "up", "--state-dir", state, "--port", free_port())
    try:
        assert first.returncode == 0, first.stderr
        vault = client(first.stdout)
        vault.sys.enable_secrets_engine("kv", path="kept", options={"version": "2"})
        vault.secrets.kv.v2.create_or_update_secret("answer", {"value": "42"}, mount_point="kept")
        old_pid = status_pid(cli, state)

        assert cli("dev", "down", "--state-dir", state).returncode == 0
        assert cli("dev", "status", "--state-dir", state).returncode != 0

        second = cli("dev", "up", "--state-dir", state)
        assert second.returncode == 0, second.stderr
        assert second.stdout == first.stdout  # same port, token and CA
        assert status_pid(cli, state) != old_pid
        secret = client(second.stdout).secrets.kv.v2.read_secret_version(
            "answer", mount_point="kept", raise_on_deleted_version=True
        )
        assert secret["data"]["data"] == {"value": "42"}
    finally:
        DevServer(state).down()


def test_status_and_env_without_a_server(cli, tmp_path):
    status = cli("dev", "status", "--state-dir", tmp_path)
    assert status.returncode == 1 and "running: no" in status.stdout
    env = cli("dev", "env", "--state-dir", tmp_path)
    assert env.returncode != 0 and env.stdout == ""
    assert env.stderr.startswith("error: ") and env.stderr.count("\n") == 1


def test_down_without_a_server_succeeds(cli, tmp_path):
    assert cli("dev", "down", "--state-dir", tmp_path / "never-started").returncode == 0


def test_port_in_use_is_a_one_line_error(cli, tmp_path, free_port):
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = cli("dev", "up", "--state-dir", tmp_path / "dev", "--port", port)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and f"port {port} " in result.stderr
    assert "Traceback" not in result.stderr


def test_shared_fixture_serves_isolated_mounts(openbao, vault_env, mount_prefix):
    assert set(vault_env) == {"VAULT_ADDR", "VAULT_TOKEN", "VAULT_CACERT"}
    vault = hvac.Client(url=openbao.addr, token=openbao.token, verify=str(openbao.cacert))
    vault.sys.enable_secrets_engine("kv", path=f"{mount_prefix}kv", options={"version": "2"})
    assert f"{mount_prefix}kv/" in vault.sys.list_mounted_secrets_engines()["data"]
