"""A throwaway SoftHSM2 token for development and tests, under the state directory.

Layout: <state_dir>/softhsm/{softhsm2.conf, tokens/, user-pin, so-pin}, PIN files mode 0600.
The caller exports SOFTHSM2_CONF=<conf_path> before the module is first used in a process
(`token.load_module` re-initialises the module if the variable changes afterwards).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from vaultk8s.errors import HsmError
from vaultk8s.store.atomic import replace_file, secret

SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")


@dataclass(frozen=True)
class DevToken:
    conf_path: Path
    label: str
    pin_file: Path
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)


def init_dev_token(state_dir: Path, label: str = "vaultk8s") -> DevToken:
    """Create the token once; later calls return the existing one with its stored PINs."""
    base = state_dir / "softhsm"
    tokens = base / "tokens"
    tokens.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = base / "softhsm2.conf"
    if not conf.exists():
        text = f"directories.tokendir = {tokens.resolve()}\nobjectstore.backend = file\nlog.level = ERROR\n"
        replace_file(conf, secret(text.encode()))
    pin_file, so_pin_file = base / "user-pin", base / "so-pin"
    if label in _token_labels(conf):
        if not (pin_file.exists() and so_pin_file.exists()):
            raise HsmError(f"dev token {label!r} exists in {tokens} but its PIN files are missing; "
                           f"delete {base} to start over")
        return DevToken(conf, label, pin_file, _read(pin_file), _read(so_pin_file))
    pin, so_pin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    # PINs are saved before the token exists, so a token is never left without its PIN.
    replace_file(pin_file, secret(f"{pin}\n".encode()))
    replace_file(so_pin_file, secret(f"{so_pin}\n".encode()))
    init_token(conf, label, pin, so_pin)
    return DevToken(conf, label, pin_file, pin, so_pin)


def _softhsm_util() -> str:
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise HsmError("softhsm2-util not found; install SoftHSM2 (Debian: apt install softhsm2)")
    return tool


def _token_labels(conf: Path) -> set[str]:
    result = subprocess.run([_softhsm_util(), "--show-slots"], capture_output=True, text=True,
                            env={**os.environ, "SOFTHSM2_CONF": str(conf)}, timeout=60)
    if result.returncode != 0:
        raise HsmError(f"softhsm2-util --show-slots failed: {result.stderr.strip()[:200]}")
    return {line.split(":", 1)[1].strip() for line in result.stdout.splitlines()
            if line.strip().startswith("Label:")}


def init_token(conf: Path, label: str, pin: str, so_pin: str) -> None:
    """Run `softhsm2-util --init-token` with the PINs typed into a pseudo-terminal.

    softhsm2-util takes PINs either in argv (visible in ps and /proc) or from a terminal (it
    refuses a pipe), and python-pkcs11 does not wrap C_InitToken. A pty keeps them out of argv.
    """
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [_softhsm_util(), "--init-token", "--free", "--label", label],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "SOFTHSM2_CONF": str(conf)}, start_new_session=True)
        os.close(slave)
        slave = -1
        # Typed ahead: the tty buffers the lines until each prompt reads one.
        os.write(master, f"{so_pin}\n{so_pin}\n{pin}\n{pin}\n".encode())
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise HsmError("softhsm2-util --init-token did not finish within 60 s") from None
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    if proc.returncode != 0:
        raise HsmError(f"softhsm2-util --init-token failed: {(err or out).strip()[-200:]}")


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()
