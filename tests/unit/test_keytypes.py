"""The one key-type table: every allowed name is in it, and each consumer derives from it."""

from __future__ import annotations

import pytest

from vaultk8s import crypto
from vaultk8s.keytypes import KEY_TYPES, LEAF_KEY_TYPES, ROOT_KEY_TYPES, SA_KEY_TYPES, vault_key_params


def test_allowed_lists_are_the_ones_messages_name():
    assert LEAF_KEY_TYPES == ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")
    assert ROOT_KEY_TYPES == ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
    assert SA_KEY_TYPES == ("rsa-2048", "ec-p256")
    assert set(LEAF_KEY_TYPES + SA_KEY_TYPES) <= set(KEY_TYPES)


def test_vault_params():
    assert [vault_key_params(n) for n in LEAF_KEY_TYPES] == [("ec", 256), ("ec", 384), ("rsa", 2048), ("rsa", 3072)]


@pytest.mark.parametrize("name", ["ec-p256", "ec-p384", "rsa-2048"])
def test_crypto_generates_and_names_each_type(name):
    assert crypto.key_type_of(crypto.generate_key(name).public_key()) == name


def test_crypto_refuses_a_name_outside_the_table():
    with pytest.raises(ValueError, match="unknown key type"):
        crypto.generate_key("rsa-1024")
