"""The HSM settings (config parses them from the `hsm:` block) and reading the token PIN.

Pure Python: no pkcs11 import here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vaultk8s.errors import HsmError, shown


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
