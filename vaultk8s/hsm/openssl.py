"""Drain the OpenSSL error queue after PKCS#11 calls.

SoftHSM (like most modules built on OpenSSL) leaves entries on the calling thread's OpenSSL error
queue, e.g. C_Initialize failing to load optional engines. Python's ssl module links the same
libcrypto and reads that queue after SSL_read, so a stale entry turns the next HTTPS read in the
thread into an SSLError ("[ENGINE: NO_SUCH_ENGINE] no such engine" while talking to Vault).
"""

from __future__ import annotations

import ctypes
import functools
import os

_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1")


@functools.lru_cache(maxsize=1)
def _libcrypto() -> ctypes.CDLL | None:
    # RTLD_NOLOAD: only a libcrypto already in the process can share a queue with ssl.
    mode = getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_LAZY", 0)
    for name in _NAMES:
        try:
            return ctypes.CDLL(name, mode=mode)
        except OSError:
            continue
    return None


def drain_openssl_errors() -> None:
    """Clear this thread's OpenSSL error queue; a no-op where libcrypto is not loaded."""
    lib = _libcrypto()
    if lib is not None:
        lib.ERR_clear_error()
