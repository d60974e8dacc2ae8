"""bench/compare.py runs end to end on a tiny cluster and prints its contract's keys (no timings asserted)."""

import json
import subprocess
import sys

import pytest

from tests.helpers.cluster import REPO

pytestmark = pytest.mark.integration

KEYS = {"workers", "certificates", "roles", "bootstrap_s", "noop_s", "floor_s", "noop_floor_s", "cfssl_s",
        "peak_rss_mb", "vaultk8s_over_floor", "cfssl_over_vaultk8s"}


def test_compare_prints_one_json_line_with_the_contract_keys():
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "compare.py"), "--workers", "2"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert KEYS <= set(result)
    assert result["workers"] == 2 and result["certificates"] == 3 * 14 + 2 * 3
    # Without golang-cfssl the loop is skipped with a reason, not a crash.
    assert result["cfssl_s"] is not None or result["cfssl_skipped"]


def test_signer_backlog_signs_a_tiny_backlog_and_prints_its_keys(tmp_path):
    from tests.helpers.kube import kube_bin_dir

    kube_bin_dir()  # skips with the reason when VAULTK8S_KUBE_BIN is unset
    work = tmp_path / "work"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "signer_backlog.py"), "--csrs", "3",
                           "--floor-threads", "2", "--work-dir", str(work)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["csrs"] == 3
    assert {"signer_s", "signer_cpu_s", "floor_s", "signer_over_floor", "signer_first_sign_s", "signer_backlog_cpu_ms_per_csr",
            "load_before", "tmpfs"} <= set(result)
    assert result["work_dir_fs"] and (work / "signer.log").exists()  # kept, with the signer's log in it
