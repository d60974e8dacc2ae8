"""The hsm: block as part of the cluster file: parsed into ClusterConfig.hsm, problems merged."""

from pathlib import Path

import pytest

from vaultk8s.config import parse_config
from vaultk8s.errors import ConfigError

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
