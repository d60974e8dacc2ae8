"""The `hsm:` block of the cluster file and the token PIN. Pure Python: no pkcs11 import here."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaultk8s.errors import ConfigError, HsmError, shown

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
_KNOWN_FIELDS = ("module", "token_label", "token_serial", "pin_env", "pin_file", "key_type")


@dataclass(frozen=True)
class HsmSettings:
    module: Path
    token_label: str | None
    token_serial: str | None
    pin_env: str | None
    pin_file: Path | None
    key_type: str

    @property
    def token_description(self) -> str:
        """How the token is named in messages: by label or by serial, as configured."""
        if self.token_label is not None:
            return f"label {shown(self.token_label)}"
        return f"serial {shown(self.token_serial)}"


def parse_hsm_block(data: Any) -> HsmSettings:
    """Validate the mapping under `hsm:`; every problem is reported, one line each."""
    if not isinstance(data, dict):
        raise ConfigError("hsm: must be a mapping with module, token_label/token_serial, "
                          "pin_env/pin_file and key_type")
    problems = _field_problems(data)
    if problems:
        raise ConfigError(problems)
    return HsmSettings(
        module=Path(data["module"]),
        token_label=data.get("token_label"),
        token_serial=data.get("token_serial"),
        pin_env=data.get("pin_env"),
        pin_file=Path(data["pin_file"]) if data.get("pin_file") is not None else None,
        key_type=data["key_type"],
    )


def _field_problems(data: dict) -> list[str]:
    problems = []
    for key in data:
        if key == "pin":
            # Never echo the value: it is a secret that should not be in the file at all.
            problems.append("hsm.pin: the PIN does not belong in the cluster file; "
                            "use pin_env (an environment variable) or pin_file (mode 0600)")
        elif key not in _KNOWN_FIELDS:
            problems.append(f"hsm.{key}: unknown key (expected: {', '.join(_KNOWN_FIELDS)})")
    for key in _KNOWN_FIELDS:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"hsm.{key}: must be a non-empty string")
    if data.get("module") is None:
        problems.append("hsm.module: required (path to the PKCS#11 module, "
                        "e.g. /usr/lib/softhsm/libsofthsm2.so)")
    problems += _exactly_one(data, "token_label", "token_serial", "select the token")
    problems += _exactly_one(data, "pin_env", "pin_file", "supply the PIN")
    pin_env = data.get("pin_env")
    if isinstance(pin_env, str) and pin_env and not pin_env.isidentifier():
        problems.append(f"hsm.pin_env: {shown(pin_env)} is not a valid environment variable name")
    key_type = data.get("key_type")
    if key_type is None:
        problems.append(f"hsm.key_type: required (one of {', '.join(KEY_TYPES)})")
    elif key_type not in KEY_TYPES:
        problems.append(f"hsm.key_type: {shown(key_type)} is not one of {', '.join(KEY_TYPES)}")
    return problems


def _exactly_one(data: dict, first: str, second: str, purpose: str) -> list[str]:
    given = [key for key in (first, second) if data.get(key) is not None]
    if len(given) == 1:
        return []
    return [f"hsm: set exactly one of {first} or {second} to {purpose} (got {len(given)})"]


def load_pin(settings: HsmSettings) -> str:
    """Read the user PIN from the configured env var or file. The PIN never enters a message."""
    if settings.pin_env is not None:
        pin = os.environ.get(settings.pin_env, "")
        if not pin:
            raise HsmError(f"environment variable {settings.pin_env} is not set or empty; "
                           "it must hold the token's user PIN")
        return pin
    if settings.pin_file is None:
        raise HsmError("no PIN source configured: set hsm.pin_env or hsm.pin_file")
    return _read_pin_file(settings.pin_file)


def _read_pin_file(path: Path) -> str:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise HsmError(f"PIN file {path} does not exist") from None
    except OSError as err:
        raise HsmError(f"cannot read PIN file {path}: {err.strerror}") from None
    if mode & 0o077:
        raise HsmError(f"PIN file {path} has mode {mode:04o}; it must be 0600 or stricter "
                       f"(run: chmod 600 {path})")
    try:
        pin = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        # `from None`: the original exception could carry file content in its args.
        raise HsmError(f"cannot read PIN file {path}: {type(err).__name__}") from None
    if not pin:
        raise HsmError(f"PIN file {path} is empty")
    return pin
