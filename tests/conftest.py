"""Shared fixtures. STOPGAP: a -dev OpenBao until the raft/TLS DevServer fixture lands (same names)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


@dataclass(frozen=True)
class VaultEnv:
    addr: str
    token: str
    cacert: Path | None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def openbao(tmp_path_factory):
    home = tmp_path_factory.mktemp("baohome")
    port = _free_port()
    token = uuid.uuid4().hex
    env = dict(os.environ, HOME=str(home), BAO_DEV_ROOT_TOKEN_ID=token)
    proc = subprocess.Popen(
        [shutil.which("bao"), "server", "-dev", "-dev-no-store-token", f"-dev-listen-address=127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    addr = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{addr}/v1/sys/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.2)
    yield VaultEnv(addr, token, None)
    proc.terminate()
    proc.wait(timeout=15)


@pytest.fixture
def vault_env(openbao) -> dict[str, str]:
    env = {"VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.token}
    if openbao.cacert:
        env["VAULT_CACERT"] = str(openbao.cacert)
    return env


@pytest.fixture
def mount_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/"
