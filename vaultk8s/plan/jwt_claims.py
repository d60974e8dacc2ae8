"""The claims of a JWT, read without verifying it (Vault verifies; we only want `exp` for a gauge). Pure."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from typing import Any


def unverified_claims(jwt: str) -> dict[str, Any]:
    """The payload of a compact JWS; {} when it is not one. Never raises, never echoes the token."""
    parts = jwt.strip().split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def expiry(jwt: str) -> datetime | None:
    """When the token stops being accepted (its `exp`), or None when it names none."""
    exp = unverified_claims(jwt).get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None
    try:
        return datetime.fromtimestamp(exp, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
