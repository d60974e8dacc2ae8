"""A real 3-node OpenBao cluster for HA tests: find the active node, SIGKILL it, bring it back."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from tests.helpers.cluster import run_cli
from tests.helpers.redacted import RedactedEnv
from vaultk8s.dev import DevServer, NodeStatus

WAIT_SECONDS = 90.0
EXPORTS = re.compile(r"^export (\w+)=(\S+)$", re.M)


@dataclass
class HaCluster:
    state: Path
    port: int
    exports: dict[str, str]  # what `dev up` printed
    up_stderr: str

    @classmethod
    def start(cls, state: Path, port: int) -> "HaCluster":
        up = run_cli("dev", "up", "--nodes", "3", "--state-dir", str(state), "--port", str(port), timeout=180)
        cluster = cls(state, port, dict(EXPORTS.findall(up.stdout)), up.stderr)
        if up.returncode != 0:
            cluster.stop()
            raise AssertionError(f"dev up --nodes 3 failed: {up.stderr[-2000:]}")
        return cluster

    def stop(self) -> None:
        pids = [n.pid for n in self.nodes() if n.pid]
        down = run_cli("dev", "down", "--state-dir", str(self.state), timeout=120)
        assert down.returncode == 0, down.stderr
        assert not [p for p in pids if _alive(p)], "dev down left a node running"

    # --- looking -------------------------------------------------------------------------------

    def nodes(self) -> tuple[NodeStatus, ...]:
        return DevServer(self.state).status().nodes

    def active(self) -> NodeStatus:
        return self._wait(lambda: next((n for n in self.nodes() if n.role == "active"), None), "an active node")

    def standby(self) -> NodeStatus:
        return self._wait(lambda: next((n for n in self.nodes() if n.role == "standby"), None), "a standby")

    def env_for(self, node: NodeStatus, token: str | None = None) -> dict[str, str]:
        """VAULT_* for a client pointed at this node."""
        return RedactedEnv({**self.exports, "VAULT_ADDR": node.addr, **({"VAULT_TOKEN": token} if token else {})})

    @property
    def token(self) -> str:
        return self.exports["VAULT_TOKEN"]

    def get(self, path: str, addr: str | None = None, method: str = "GET") -> dict:
        """A raw admin request (answered by the active node, through whichever node addr names)."""
        addr = addr or self.active().addr
        resp = requests.request(method, f"{addr}/v1/{path}", headers={"X-Vault-Token": self.token}, timeout=30,
                                verify=self.exports["VAULT_CACERT"])
        if resp.status_code == 404:
            return {}
        resp.raise_for_status()
        return resp.json()

    # --- faults --------------------------------------------------------------------------------

    def kill(self, node: NodeStatus) -> None:
        os.kill(node.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(node.pid):
            assert time.monotonic() < deadline, f"OpenBao pid {node.pid} survived SIGKILL"
            time.sleep(0.1)

    def step_down(self) -> subprocess.CompletedProcess:
        """The real `bao operator step-down` against the active node."""
        from vaultk8s.dev import find_bao

        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.update(BAO_ADDR=self.active().addr, BAO_TOKEN=self.token, BAO_CACERT=self.exports["VAULT_CACERT"])
        return subprocess.run([find_bao(), "operator", "step-down"], env=env, capture_output=True, text=True,
                              timeout=60)

    def heal(self) -> None:
        """`dev up` again: restarts killed nodes and unseals them; then every node is up."""
        up = run_cli("dev", "up", "--state-dir", str(self.state), timeout=180)
        assert up.returncode == 0, up.stderr
        self._wait(lambda: all(n.role in ("active", "standby") for n in self.nodes()), "every node back")

    def _wait(self, check, what: str):
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            found = check()
            if found:
                return found
            assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS:.0f}s"
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """The process, killed and waited for on the way out if it is still running (a failed test)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def start_cli(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """`python -m vaultk8s ...` running in the background (helpers.cluster.run_cli's environment)."""
    import sys

    from tests.helpers.cluster import REPO

    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    base["PYTHONPATH"] = str(REPO) + os.pathsep + base.get("PYTHONPATH", "")
    return subprocess.Popen([sys.executable, "-m", "vaultk8s", *args], env={**base, **env}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_one_clear_line(returncode: int, stderr: str) -> None:
    """A run that did not complete says why in one line, no traceback, no token."""
    print(f"fault outcome: exit {returncode}: {stderr.strip().splitlines()[-1] if stderr.strip() else 'completed'}")
    if returncode == 0:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    assert "Traceback" not in stderr and "s." not in lines[0].split("error: ", 1)[1][:2]
