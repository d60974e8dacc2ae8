"""Durations: the Go-style notation the cluster file and flags use, and each form vaultk8s writes.

One function per output format, named for what it returns. The human forms differ on purpose:
each is already what its readers (and their tests) see in one place.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from vaultk8s.errors import shown

_PART = re.compile(r"(\d+)(d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: Any) -> timedelta:
    """Go-style durations as Kubernetes and Vault write them: 24h, 90m, 87600h, 1h30m, 30d."""
    if isinstance(text, int) and not isinstance(text, bool):
        return timedelta(seconds=text)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{shown(text)} is not a duration such as 24h or 90m")
    parts = _PART.findall(text)
    if "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{shown(text)} is not a duration such as 24h or 90m")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in parts))


def vault_ttl(delta: timedelta) -> str:
    """"3600s": whole seconds, the form Vault's string ttl parameters take."""
    return f"{whole_seconds(delta)}s"


def whole_seconds(value: Any) -> int:
    """Whole seconds of a timedelta, of Vault's integer seconds, or of a duration string such as
    Vault's "24h"; 0 when the value is none of these (a role read back with no max_ttl)."""
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    if isinstance(value, int):
        return value
    try:
        return int(parse_duration(str(value)).total_seconds())
    except ValueError:
        return 0


def hours_minutes(delta: timedelta) -> str:
    """"48h", "1h30m", "45m": the cluster file's own notation, rounded down to minutes."""
    hours, minutes = divmod(max(0, int(delta.total_seconds()) // 60), 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


def days_hours(seconds: int | None) -> str:
    """"3d4h" from a day on, "4h30m" below it, "-" for none: a table column's remaining life or age."""
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d{hours}h" if days else f"{hours}h{rest // 60}m"


def hours_or_seconds(seconds: int) -> str:
    """"24h" for whole hours, "90s" otherwise: a role's max_ttl in the review matrix."""
    return f"{seconds // 3600}h" if seconds and seconds % 3600 == 0 else f"{seconds}s"


def rfc3339(when: datetime) -> str:
    """A UTC instant as RFC 3339 with a Z, to the second: 2026-12-03T05:45:32Z."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
