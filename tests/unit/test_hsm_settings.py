from pathlib import Path

import pytest

from vaultk8s.errors import ConfigError, HsmError
from vaultk8s.hsm.settings import HsmSettings, load_pin, parse_hsm_block

VALID = {
    "module": "/usr/lib/softhsm/libsofthsm2.so",
    "token_label": "vaultk8s",
    "pin_env": "VAULTK8S_HSM_PIN",
    "key_type": "ec-p384",
}


def _settings(**changes) -> HsmSettings:
    base = dict(module=Path("/m.so"), token_label="t", token_serial=None, pin_env=None,
                pin_file=None, key_type="ec-p256")
    return HsmSettings(**{**base, **changes})


def test_valid_block():
    settings = parse_hsm_block(VALID)
    assert settings == HsmSettings(Path(VALID["module"]), "vaultk8s", None, "VAULTK8S_HSM_PIN",
                                   None, "ec-p384")


def test_serial_and_pin_file():
    data = {**VALID, "token_serial": "abc", "pin_file": "/p"}
    del data["token_label"], data["pin_env"]
    settings = parse_hsm_block(data)
    assert settings.token_serial == "abc" and settings.pin_file == Path("/p")


def test_every_problem_reported_one_line_each():
    with pytest.raises(ConfigError) as err:
        parse_hsm_block({"key_type": "dsa", "token_label": "a", "token_serial": "b", "x": 1})
    problems = err.value.problems
    assert len(problems) == 5
    assert all("\n" not in p for p in problems)
    assert any(p.startswith("hsm.x: unknown key") for p in problems)
    assert any(p.startswith("hsm.module: required") for p in problems)
    assert any("token_label or token_serial" in p for p in problems)
    assert any("pin_env or pin_file" in p for p in problems)
    assert any("'dsa' is not one of" in p for p in problems)


def test_literal_pin_is_refused_without_echo():
    with pytest.raises(ConfigError) as err:
        parse_hsm_block({**VALID, "pin": "s3cret-value"})
    assert "s3cret-value" not in str(err.value)
    assert "hsm.pin" in str(err.value)


@pytest.mark.parametrize("bad", [None, [], "x"])
def test_block_must_be_mapping(bad):
    with pytest.raises(ConfigError):
        parse_hsm_block(bad)


def test_bad_env_name_and_empty_strings():
    with pytest.raises(ConfigError) as err:
        parse_hsm_block({**VALID, "pin_env": "NOT-VALID", "token_label": " "})
    assert any("not a valid environment variable" in p for p in err.value.problems)
    assert any(p.startswith("hsm.token_label: must be a non-empty string")
               for p in err.value.problems)


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
