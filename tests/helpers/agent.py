"""The agent as operators run it: a bootstrapped cluster with worker-1's credential, the agent as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import requests

from tests.helpers.policy import applied_cluster, cli


@pytest.fixture
def node_env(vault_env, tmp_path, mount_prefix):
    """A bootstrapped cluster, policies applied, and worker-1's credential files.

    Returns (cluster file, config, credentials dir, env without the operator token, out dir).
    """
    path, config, _ = applied_cluster(vault_env, tmp_path, mount_prefix)
    creds = tmp_path / "creds-worker-1"
    made = cli(vault_env, "node", "credentials", "-c", str(path), "--node", "worker-1", "--out", str(creds))
    assert made.returncode == 0, made.stderr
    no_token = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}
    return path, config, creds, no_token, tmp_path / "out"


def start_agent(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen:
    """`python -m vaultk8s agent ARGS` in the background, stderr to log (read it after stop_agent)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "NOTIFY_", "WATCHDOG_"))}
    with log.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "vaultk8s", "agent", *args], env=full | env,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)


def stop_agent(proc: subprocess.Popen, sig: int | None = None) -> int:
    """SIGTERM (or sig) and a bounded wait; killed if it does not stop. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(sig or 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def wait_for(what: str, probe: Callable[[], object], timeout: float = 60) -> object:
    """Poll probe() until it returns something truthy (exceptions count as not yet); bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def get(port: int, path: str) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5)
