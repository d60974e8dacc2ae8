"""Root CA keys in a PKCS#11 token. The only package that imports pkcs11."""

from vaultk8s.hsm.devtoken import SOFTHSM_MODULE, DevToken, init_dev_token
from vaultk8s.hsm.root import HsmRootAuthority, RootKeyStatus
from vaultk8s.hsm.settings import HsmSettings, load_pin
from vaultk8s.hsm.token import load_module, open_token, refresh_module

__all__ = [
    "SOFTHSM_MODULE",
    "DevToken",
    "HsmRootAuthority",
    "HsmSettings",
    "RootKeyStatus",
    "init_dev_token",
    "load_module",
    "load_pin",
    "open_token",
    "refresh_module",
]
