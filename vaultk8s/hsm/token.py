"""Loading the PKCS#11 module and opening a logged-in session on the configured token.

Module caching: python-pkcs11 keeps one `lib` per module path for the life of the process, and
SoftHSM reads SOFTHSM2_CONF (and scans its token directory) only in C_Initialize. So we remember
the SOFTHSM2_CONF value each module was initialised with and re-run C_Finalize/C_Initialize when it
changed, or once when the token is not found (it may have been created by another process since).
Re-initialising invalidates every session, so it is refused while one of ours is open.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pkcs11
from pkcs11 import exceptions as p11e

from vaultk8s.errors import HsmError, shown
from vaultk8s.hsm.openssl import drain_openssl_errors
from vaultk8s.hsm.settings import HsmSettings, load_pin

_CONF_ENV = "SOFTHSM2_CONF"
_initialised_with: dict[str, str | None] = {}
_open_sessions: dict[str, int] = {}


def load_module(module: Path) -> pkcs11.lib:
    """Load (or reuse) the module, re-initialising it if SOFTHSM2_CONF changed since."""
    key = str(module)
    if not module.exists():
        raise HsmError(f"PKCS#11 module {module} not found; install it or fix hsm.module")
    _check_softhsm_conf()
    try:
        lib = pkcs11.lib(key)
    except p11e.PKCS11Error as err:
        reason = str(err).strip() or type(err).__name__
        raise HsmError(f"cannot load PKCS#11 module {module}: {reason}") from None
    finally:
        drain_openssl_errors()
    conf = os.environ.get(_CONF_ENV)
    if key in _initialised_with and _initialised_with[key] != conf:
        _reinitialise(lib, key)
    _initialised_with[key] = conf
    return lib


def _check_softhsm_conf() -> None:
    """SoftHSM fails C_Initialize without a reason when its config is missing: name the variable."""
    conf = os.environ.get(_CONF_ENV)
    if conf is None:
        return
    try:
        with open(conf, "rb"):
            pass
    except OSError as err:
        raise HsmError(f"{_CONF_ENV}={shown(conf)}: {err.strerror}; point it at softhsm2.conf") from None


def refresh_module(module: Path) -> None:
    """Make an already-loaded module rescan its tokens (e.g. after softhsm2-util created one)."""
    key = str(module)
    if key in _initialised_with:
        _reinitialise(pkcs11.lib(key), key)
        _initialised_with[key] = os.environ.get(_CONF_ENV)


def _reinitialise(lib: pkcs11.lib, key: str) -> None:
    if _open_sessions.get(key):
        raise HsmError(f"cannot re-initialise PKCS#11 module {key} while a session is open "
                       f"({_CONF_ENV} changed or a token was added)")
    try:
        lib.reinitialize()
    finally:
        drain_openssl_errors()


@contextmanager
def open_token(settings: HsmSettings) -> Iterator[pkcs11.Session]:
    """A read-write session logged in as the user; closed (and logged out) on exit."""
    lib = load_module(settings.module)
    token = _find_token(lib, settings)
    try:
        session = _login(token, settings)
    finally:
        drain_openssl_errors()
    key = str(settings.module)
    _open_sessions[key] = _open_sessions.get(key, 0) + 1
    try:
        yield session
    finally:
        _open_sessions[key] -= 1
        session.close()
        drain_openssl_errors()


def _find_token(lib: pkcs11.lib, settings: HsmSettings) -> pkcs11.Token:
    tokens = _matching_tokens(lib, settings)
    if not tokens and not _open_sessions.get(str(settings.module)):
        refresh_module(settings.module)
        tokens = _matching_tokens(lib, settings)
    if not tokens:
        raise HsmError(f"no PKCS#11 token with {settings.token_description} in {settings.module}"
                       f"{_conf_hint()}")
    if len(tokens) > 1:
        raise HsmError(f"{len(tokens)} PKCS#11 tokens have {settings.token_description}; "
                       "select the token by token_serial instead")
    return tokens[0]


def _matching_tokens(lib: pkcs11.lib, settings: HsmSettings) -> list[pkcs11.Token]:
    serial = settings.token_serial.encode() if settings.token_serial is not None else None
    try:
        return list(lib.get_tokens(token_label=settings.token_label, token_serial=serial))
    except p11e.PKCS11Error as err:
        raise HsmError(f"cannot list tokens of {settings.module}: {type(err).__name__}") from None


def _conf_hint() -> str:
    conf = os.environ.get(_CONF_ENV)
    return f" (SOFTHSM2_CONF={conf})" if conf else ""


def _login(token: pkcs11.Token, settings: HsmSettings) -> pkcs11.Session:
    where = f"token {token.label!r}"
    pin = load_pin(settings)
    try:
        return token.open(rw=True, user_pin=pin)
    except (p11e.PinIncorrect, p11e.PinLenRange, p11e.PinInvalid):
        raise HsmError(f"{where}: the PIN was rejected (wrong PIN); "
                       "check the PIN source, repeated failures may lock the token") from None
    except p11e.PinLocked:
        raise HsmError(f"{where}: the user PIN is locked; the security officer must reset it") \
            from None
    except p11e.PinExpired:
        raise HsmError(f"{where}: the user PIN has expired; set a new one") from None
    except p11e.UserPinNotInitialized:
        raise HsmError(f"{where}: the user PIN is not initialised") from None
    except p11e.PKCS11Error as err:
        raise HsmError(f"{where}: login failed: {type(err).__name__}") from None
