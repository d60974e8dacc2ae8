"""Root CA keys in a PKCS#11 token. The only package that imports pkcs11."""

from vaultk8s.hsm.devtoken import SOFTHSM_MODULE, DevToken, init_dev_token
from vaultk8s.hsm.root import HsmRootAuthority, RootKeyStatus
from vaultk8s.hsm.settings import KEY_TYPES, HsmSettings, load_pin, parse_hsm_block
from vaultk8s.hsm.token import load_module, open_token, refresh_module

__all__ = [
    "KEY_TYPES",
    "SOFTHSM_MODULE",
    "DevToken",
    "HsmRootAuthority",
    "HsmSettings",
    "RootKeyStatus",
    "init_dev_token",
    "load_module",
    "load_pin",
    "open_token",
    "parse_hsm_block",
    "refresh_module",
]
