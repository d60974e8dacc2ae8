"""Durations in, and each form vaultk8s writes out."""

from __future__ import annotations

from datetime import timedelta

import pytest

from vaultk8s.durations import days_hours, hours_minutes, hours_or_seconds, parse_duration, vault_ttl, whole_seconds


@pytest.mark.parametrize("text,seconds", [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("30d", 2592000), (60, 60)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "24", "1.5h", "-1h", "24h ", True])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_vault_ttl_and_whole_seconds():
    assert vault_ttl(timedelta(hours=1, microseconds=5)) == "3600s"
    assert [whole_seconds(v) for v in (timedelta(minutes=2), 90, "24h", "junk", None)] == [120, 90, 86400, 0, 0]


def test_hours_minutes():
    assert [hours_minutes(timedelta(minutes=m)) for m in (0, 45, 60, 90, 2880)] == ["0m", "45m", "1h", "1h30m", "48h"]


def test_days_hours_and_hours_or_seconds():
    assert [days_hours(s) for s in (None, 59, 5400, 86400 + 4 * 3600 + 59)] == ["-", "0h0m", "1h30m", "1d4h"]
    assert [hours_or_seconds(s) for s in (0, 90, 86400)] == ["0s", "90s", "24h"]
