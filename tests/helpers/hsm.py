"""HSM mode for tests: a fresh SoftHSM2 token (its own SOFTHSM2_CONF) and the cluster file's `hsm:` block.

In-process callers use `new_token(base, monkeypatch)`, which exports the token's SOFTHSM2_CONF and
PIN; callers running the CLI as a subprocess use `init_dev_token(base)` and pass `token_environ(token)`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from vaultk8s.hsm import SOFTHSM_MODULE, DevToken, init_dev_token

PIN_ENV = "VAULTK8S_TEST_HSM_PIN"
HAVE_SOFTHSM = SOFTHSM_MODULE.exists() and shutil.which("softhsm2-util") is not None
needs_softhsm = pytest.mark.skipif(not HAVE_SOFTHSM, reason="SoftHSM2 is not installed")

__all__ = ["HAVE_SOFTHSM", "PIN_ENV", "hsm_section", "init_dev_token", "needs_softhsm", "new_token",
           "token_environ"]


def hsm_section(key_type: str, *, pin_env: str = PIN_ENV, label: str = "vaultk8s") -> dict[str, Any]:
    """The cluster file's `hsm:` block for a SoftHSM token whose PIN is in the environment."""
    return {"module": str(SOFTHSM_MODULE), "token_label": label, "pin_env": pin_env, "key_type": key_type}


def token_environ(token: DevToken) -> dict[str, str]:
    """What a process needs to open the token: its SoftHSM config and the PIN under PIN_ENV."""
    return {"SOFTHSM2_CONF": str(token.conf_path), PIN_ENV: token.pin}


def new_token(base: Path, monkeypatch: pytest.MonkeyPatch) -> DevToken:
    """A fresh token under base, exported to this process for the monkeypatch's lifetime."""
    token = init_dev_token(base)
    for name, value in token_environ(token).items():
        monkeypatch.setenv(name, value)
    return token
