"""The shipped alert rules (deploy/prometheus/) are valid and behave as their unit tests say, by
Debian's promtool."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.prometheus import promtool

pytestmark = pytest.mark.skipif(not shutil.which("promtool"),
                                reason="promtool is not installed (Debian prometheus; scripts/setup.sh)")

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_rules_check():
    done = promtool("check", "rules", str(RULES_DIR / "vaultk8s-alerts.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


def test_rules_unit_tests_pass():
    done = promtool("test", "rules", "vaultk8s-alerts.test.yml", cwd=RULES_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
