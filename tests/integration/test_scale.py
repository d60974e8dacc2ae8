"""A 1000-worker cluster bootstraps without error (timings live in bench/, not here); the file
phases write the same tree on one thread as on all of them."""

from datetime import datetime, timezone

import pytest

from tests.helpers.cluster import cluster_doc
from tests.helpers.golden import tree_manifest
from vaultk8s.config import parse_config
from vaultk8s.ops.bootstrap import FILE_WORKERS, bootstrap
from vaultk8s.store import paced
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


def test_one_thread_and_all_threads_write_the_same_tree(openbao, mount_prefix, tmp_path, monkeypatch, caplog):
    """Which count PacedPool picks depends on the disk, so CI may only ever take one: each is
    forced here, on 40 workers (timed stretches); the golden manifests of both trees
    (paths, modes, links, every certificate's subject and SANs) must be equal, and a re-run a no-op.
    The gateway's default pool holds bootstrap's default workers: no connection made and dropped."""
    config = parse_config(cluster_doc(mount_prefix, workers=40))
    gateway = VaultGateway.from_env(openbao.as_environ())
    manifests = {}
    for threads, margin in ((1, 0.0), (FILE_WORKERS, float("inf"))):  # pool never / always faster
        monkeypatch.setattr(paced, "POOL_MARGIN", margin)
        out = tmp_path / f"threads-{threads}"
        report = bootstrap(config, out, gateway, now=datetime.now(timezone.utc))
        assert report.file_threads == {"node files": [threads], "kubeconfigs": [threads]}  # one stretch
        again = bootstrap(config, out, gateway, now=datetime.now(timezone.utc))
        assert again.actions == [] and again.kept == sum(a.kind == "issue" for a in report.actions)
        manifests[threads] = tree_manifest(out)
    assert manifests[1] == manifests[FILE_WORKERS]
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()], "default pool < DEFAULT_WORKERS"
    assert len(manifests[1]) > 43 * 10  # every node's files, links and version directories

