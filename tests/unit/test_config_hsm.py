"""The hsm: block as part of the cluster file: parsed into ClusterConfig.hsm, problems merged."""

from pathlib import Path

import pytest

from vaultk8s.config import parse_config
from vaultk8s.errors import ConfigError
from vaultk8s.hsm.settings import HsmSettings

BASE = {
    "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443"},
    "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}]},
}
HSM = {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "vaultk8s",
       "pin_env": "VAULTK8S_HSM_PIN", "key_type": "ec-p384"}


def test_no_hsm_block_means_vault_roots():
    assert parse_config(dict(BASE)).hsm is None


def test_hsm_block_parsed():
    hsm = parse_config({**BASE, "hsm": HSM}).hsm
    assert hsm.module == Path(HSM["module"]) and hsm.key_type == "ec-p384"
    assert hsm.token_label == "vaultk8s" and hsm.pin_env == "VAULTK8S_HSM_PIN"


def test_hsm_problems_reported_with_the_others():
    data = {**BASE, "pki": {"key_type": "dsa"}, "hsm": {**HSM, "pin": "123456", "key_type": "ec-p521"}}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    problems = err.value.problems
    assert any(p.startswith("pki.key_type") for p in problems)
    assert any(p.startswith("hsm.pin:") for p in problems)
    assert any(p.startswith("hsm.key_type") for p in problems)
    assert "123456" not in str(err.value)


def test_hsm_block_must_be_a_mapping():
    with pytest.raises(ConfigError, match="hsm: must be a mapping"):
        parse_config({**BASE, "hsm": "softhsm"})


def _hsm(block):
    return parse_config({**BASE, "hsm": block}).hsm


def test_valid_block():
    assert _hsm(HSM) == HsmSettings(Path(HSM["module"]), "vaultk8s", None, "VAULTK8S_HSM_PIN", None, "ec-p384")


def test_serial_and_pin_file():
    data = {**HSM, "token_serial": "abc", "pin_file": "/p"}
    del data["token_label"], data["pin_env"]
    settings = _hsm(data)
    assert settings.token_serial == "abc" and settings.pin_file == Path("/p")


def test_every_problem_reported_one_line_each():
    with pytest.raises(ConfigError) as err:
        _hsm({"key_type": "dsa", "token_label": "a", "token_serial": "b", "x": 1})
    problems = err.value.problems
    assert len(problems) == 5
    assert all("\n" not in p for p in problems)
    assert any(p.startswith("hsm.x: unknown key") for p in problems)
    assert any(p.startswith("hsm.module: required") for p in problems)
    assert any("token_label or token_serial" in p for p in problems)
    assert any("pin_env or pin_file" in p for p in problems)
    assert any("'dsa' is not one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096" in p for p in problems)


def test_literal_pin_is_refused_without_echo():
    with pytest.raises(ConfigError) as err:
        _hsm({**HSM, "pin": "s3cret-value"})
    assert "s3cret-value" not in str(err.value)
    assert "hsm.pin" in str(err.value)


@pytest.mark.parametrize("bad", [[], "x", 5])
def test_block_must_be_mapping(bad):
    with pytest.raises(ConfigError, match="hsm: must be a mapping"):
        _hsm(bad)


def test_bad_env_name_and_empty_strings():
    with pytest.raises(ConfigError) as err:
        _hsm({**HSM, "pin_env": "NOT-VALID", "token_label": " "})
    assert any("not a valid environment variable" in p for p in err.value.problems)
    assert any(p.startswith("hsm.token_label: must be a non-empty string")
               for p in err.value.problems)
