"""One list of crash points: the code, docs/ha.md and the crash test all name exactly POINTS."""

import re
from pathlib import Path

import pytest

from tests.integration.test_crash import BOOTSTRAP_CRASHES
from vaultk8s.crashpoint import ENV, POINTS, crash_point

ROOT = Path(__file__).resolve().parents[2]


def test_the_code_passes_every_point_and_names_no_other():
    called = set()
    for path in (ROOT / "vaultk8s").rglob("*.py"):
        called |= set(re.findall(r'crash_point\("([a-z-]+)"\)', path.read_text()))
    assert called == set(POINTS)


def test_docs_table_is_the_registry():
    rows = re.findall(r"^\| `([a-z-]+)` \| (.+) \|$", (ROOT / "docs" / "ha.md").read_text(), re.MULTILINE)
    assert dict(rows) == POINTS and len(rows) == len(POINTS)


def test_the_crash_test_kills_at_every_point():
    assert {point for point, _, _ in BOOTSTRAP_CRASHES} == set(POINTS)


def test_unknown_names_are_refused(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(ValueError, match="not in vaultk8s.crashpoint.POINTS"):
        crash_point("rolez")
    crash_point("roles")  # a known point, no crash asked for: nothing happens
    monkeypatch.setenv(ENV, "rolez#2")
    with pytest.raises(ValueError, match="names no crash point"):
        crash_point("roles")

