"""When a JWT stops being accepted, read without verifying it (Vault verifies; we only want `exp`
for a gauge), with PyJWT. Pure."""

from __future__ import annotations

from datetime import datetime, timezone

import jwt as pyjwt


def expiry(token: str) -> datetime | None:
    """The token's `exp`, or None when it is not a JWT or names none. Never raises, never echoes it."""
    try:
        claims = pyjwt.decode(token.strip(), options={"verify_signature": False, "verify_exp": False})
    except pyjwt.InvalidTokenError:
        return None
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None
    try:
        return datetime.fromtimestamp(exp, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
