"""A 1000-worker cluster bootstraps without error (timings live in bench/, not here)."""

from datetime import datetime, timezone

import pytest

from tests.helpers.cluster import cluster_doc
from vaultk8s.config import parse_config
from vaultk8s.ops.bootstrap import bootstrap
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration


def test_thousand_workers(openbao, mount_prefix, tmp_path):
    config = parse_config(cluster_doc(mount_prefix, workers=1000))
    gateway = VaultGateway.from_env(openbao.as_environ(), pool_size=10)
    first = bootstrap(config, tmp_path, gateway, now=datetime.now(timezone.utc), workers=8)
    issued = [a for a in first.actions if a.kind == "issue"]
    assert len(issued) == 14 + 1000 * 3
    assert len([a for a in first.actions if a.kind == "write-role"]) == 9 + 5 + 1000 * 2
    assert (tmp_path / "worker-1000" / "pki" / "kubelet-client.crt").exists()
    second = bootstrap(config, tmp_path, gateway, now=datetime.now(timezone.utc), workers=8)
    assert second.actions == [] and second.kept == len(issued)
