from pathlib import Path

import pytest

from vaultk8s.errors import HsmError
from vaultk8s.hsm.settings import HsmSettings, load_pin


def _settings(**changes) -> HsmSettings:
    base = dict(module=Path("/m.so"), token_label="t", token_serial=None, pin_env=None,
                pin_file=None, key_type="ec-p256")
    return HsmSettings(**{**base, **changes})


def test_pin_from_env(monkeypatch):
    monkeypatch.setenv("MY_PIN", "1234")
    assert load_pin(_settings(pin_env="MY_PIN")) == "1234"


def test_pin_env_unset(monkeypatch):
    monkeypatch.delenv("MY_PIN", raising=False)
    with pytest.raises(HsmError, match="MY_PIN is not set"):
        load_pin(_settings(pin_env="MY_PIN"))


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_pin_file_strict_modes_accepted(tmp_path, mode):
    path = tmp_path / "pin"
    path.write_text("9876\n")
    path.chmod(mode)
    assert load_pin(_settings(pin_file=path)) == "9876"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_pin_file_loose_mode_refused(tmp_path, mode):
    path = tmp_path / "pin"
    path.write_text("9876\n")
    path.chmod(mode)
    with pytest.raises(HsmError) as err:
        load_pin(_settings(pin_file=path))
    assert f"{mode:04o}" in str(err.value) and "0600" in str(err.value)
    assert "9876" not in str(err.value)


def test_pin_file_missing(tmp_path):
    with pytest.raises(HsmError, match="does not exist"):
        load_pin(_settings(pin_file=tmp_path / "nope"))
