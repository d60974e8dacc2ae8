"""Shared fixtures: one real OpenBao per test session, and helpers to keep tests isolated on it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.helpers.ports import find_free_port
from tests.helpers.redacted import RedactedEnv
from vaultk8s.dev import DevServer, VaultEnv


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Call it for a port P such that P and P+1 are free on 127.0.0.1."""
    return find_free_port


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultEnv]:
    """A real OpenBao (raft + TLS), initialised and unsealed, shared by the whole session."""
    server = DevServer(tmp_path_factory.mktemp("bao"), port=find_free_port(), start_timeout=30, stop_timeout=10)
    env = server.up()
    try:
        yield env
    finally:
        server.down()


@pytest.fixture
def vault_env(openbao: VaultEnv) -> dict[str, str]:
    """VAULT_ADDR / VAULT_TOKEN / VAULT_CACERT for a subprocess or CliRunner(env=...); its repr (in a
    failing test's traceback) names the keys only."""
    return RedactedEnv(openbao.as_environ())


@pytest.fixture
def mount_prefix() -> str:
    """A unique path prefix such as `t1a2b3c4d/`, so tests sharing one server never collide."""
    return f"t{uuid.uuid4().hex[:8]}/"


@pytest.fixture(scope="module")
def openbao_ha(tmp_path_factory: pytest.TempPathFactory):
    """A real 3-node OpenBao raft cluster started with `vaultk8s dev up --nodes 3`, for one module;
    `vaultk8s dev down` stops every node at the end (checked)."""
    from tests.helpers.ha import HaCluster

    cluster = HaCluster.start(tmp_path_factory.mktemp("bao-ha") / "dev", find_free_port(span=6))
    try:
        yield cluster
    finally:
        cluster.stop()
