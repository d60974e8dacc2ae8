"""Crash consistency: `vaultk8s bootstrap` SIGKILLed at 21 points, OpenBao SIGKILLed at 10 more.

The bootstrap kills come from the VAULTK8S_TEST_CRASH_AT hook (vaultk8s/crashpoint.py): the
process SIGKILLs itself at a named point between two steps. OpenBao is killed by time while a
bootstrap runs against it, and restarted at once by the test (as a supervisor would).

After each fault: no certificate is visible without its matching key (checked right after the
kill, before any re-run), and a re-run converges: one issuer per CA, the service-account key set
kept (never replaced once it existed), at most one version dir per pki/, no temp file readable
by others, `certs check` clean (tests/helpers/converge.py).
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from tests.helpers.ports import find_free_port
from tests.helpers import converge
from tests.helpers.cluster import cluster_doc, write_cluster
from tests.helpers.ha import assert_one_clear_line, reaped, start_cli
from vaultk8s.config import load_config
from vaultk8s.crashpoint import ENV
from vaultk8s.dev import DevServer

pytestmark = pytest.mark.integration

# (point, n-th pass, with --force-renew over an existing output): between every two steps of a
# first run, inside the payload swap, and while re-issuing over certificates already on disk.
# Every point of vaultk8s.crashpoint.POINTS is here at least once (tests/unit/test_crashpoint.py).
BOOTSTRAP_CRASHES = [
    ("checked", 1, False), ("ca-action", 1, False), ("ca-action", 2, False), ("ca-action", 5, False),
    ("ca-action", 12, False), ("cas", 1, False), ("sa-metadata", 1, False), ("sa", 1, False),
    ("role-written", 3, False), ("roles", 1, False), ("leaf-issued", 5, False), ("issued", 1, False),
    ("payload-written", 1, False), ("payload-swapped", 1, False), ("payload-link", 2, False),
    ("node-written", 1, False), ("nodes", 1, False), ("file-tmp", 2, False), ("kubeconfigs", 1, False),
    ("payload-swapped", 2, True), ("leaf-issued", 10, True),
]
OPENBAO_KILLS = 10


@pytest.fixture(scope="module")
def crash_bao(tmp_path_factory):
    """Its own 1-node OpenBao: these tests kill it."""
    server = DevServer(tmp_path_factory.mktemp("bao-crash"), port=find_free_port(), start_timeout=60)
    env = server.up()
    try:
        yield server, env.as_environ()
    finally:
        server.down()


def _cluster(tmp_path, prefix):
    return write_cluster(tmp_path / "cluster.yaml", cluster_doc(prefix, workers=2))


@pytest.mark.parametrize(("point", "nth", "rerun"), BOOTSTRAP_CRASHES,
                         ids=[f"{p}#{n}{'-renew' if r else ''}" for p, n, r in BOOTSTRAP_CRASHES])
def test_bootstrap_killed_at(crash_bao, tmp_path, mount_prefix, point, nth, rerun):
    _, env = crash_bao
    path, out = _cluster(tmp_path, mount_prefix), tmp_path / "out"
    view = converge.VaultView(env)
    if rerun:
        done = converge.bootstrap(path, out, env)
        assert done.returncode == 0, done.stderr
    crashed = converge.bootstrap(path, out, {**env, ENV: f"{point}#{nth}"}, *(["--force-renew"] if rerun else []))
    assert crashed.returncode == -signal.SIGKILL, f"the crash point was not reached: {crashed.stderr[-1500:]}"
    converge.assert_pairs_match(out, path)  # what a reader sees right after the crash
    sa_before = view.sa_state(path)[0] or None
    converge.assert_converged(path, out, env, sa_doc=sa_before)


def test_openbao_killed_during_bootstrap(crash_bao, tmp_path, mount_prefix):
    """Even rounds kill by time (0.3-1.5 s after the start: the CA/role phases), odd ones once the
    signing phase has issued a random number of certificates; every second round re-runs with
    --force-renew over the output of the one before."""
    server, env = crash_bao
    view = converge.VaultView(env)
    rng = random.Random(8)
    path = write_cluster(tmp_path / "cluster.yaml", cluster_doc(mount_prefix, workers=40))
    mount = load_config(path).mount("kubernetes-ca")
    outcomes = []
    for round_ in range(OPENBAO_KILLS):
        out = tmp_path / f"out-{round_ // 2}"
        sa_before = view.sa_state(path)[0] or None
        signed = _cert_count(view, mount)
        trigger = (("after s", round(rng.uniform(0.3, 1.5), 2)) if round_ % 2 == 0
                   else ("after certs", rng.randint(5, 60)))
        renew = ["--force-renew"] if round_ % 2 else []
        with reaped(start_cli("bootstrap", "-c", str(path), "-o", str(out), *renew, env=env)) as proc:
            started = time.monotonic()
            while proc.poll() is None:
                if trigger[0] == "after s" and time.monotonic() - started >= trigger[1]:
                    break
                if trigger[0] == "after certs" and _cert_count(view, mount) - signed >= trigger[1]:
                    break
                time.sleep(0.05)
            mid_run = proc.poll() is None
            _kill_and_restart(server)
            _, stderr = proc.communicate(timeout=300)
        assert_one_clear_line(proc.returncode, stderr)
        outcomes.append((*trigger, "mid-run" if mid_run else "after the run", proc.returncode))
        converge.assert_pairs_match(out, path)
        converge.assert_converged(path, out, env, sa_doc=sa_before)
    print(f"OpenBao kills (trigger, when, bootstrap exit): {outcomes}")
    assert all(o[2] == "mid-run" for o in outcomes if o[0] == "after certs")


def _cert_count(view: converge.VaultView, mount: str) -> int:
    try:
        return len((view.get(f"{mount}/certs", "LIST").get("data") or {}).get("keys") or [])
    except Exception:  # OpenBao being restarted: look again
        return 0


def _kill_and_restart(server: DevServer) -> None:
    """SIGKILL the server, wait until it is gone, start and unseal it again (a supervisor's job)."""
    pid = server.status().pid
    if pid:
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while server.status().pid and time.monotonic() < deadline:
            time.sleep(0.05)
    server.up()
