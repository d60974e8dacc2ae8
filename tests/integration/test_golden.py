"""Golden comparison: the example clusters' policies, trees, kubeconfigs and Vault-side roles.

Everything runs through the CLI (a refactor may move any function), against the session's real
OpenBao (and a real SoftHSM2 token for the HSM example). What is random (keys, serials, instants,
role_ids) is described, not copied; see tests/helpers/golden.py. Regenerate after an intended
change with `VAULTK8S_UPDATE_GOLDEN=1 python3 -m pytest tests/integration/test_golden.py` and
review the diff of tests/golden/.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.helpers.cluster import REPO, run_cli
from tests.helpers.golden import tree_manifest, vault_manifest
from tests.helpers.hsm import HAVE_SOFTHSM, PIN_ENV, hsm_section, init_dev_token, token_environ
from vaultk8s.vault.gateway import VaultGateway

pytestmark = pytest.mark.integration

GOLDEN = REPO / "tests" / "golden"
UPDATE = os.environ.get("VAULTK8S_UPDATE_GOLDEN") == "1"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PORT = re.compile(r"127\.0\.0\.1:\d+")


def _example(name: str, prefix: str) -> dict:
    doc = yaml.safe_load((REPO / "examples" / name).read_text())
    doc["vault"]["mount_prefix"] = prefix
    return doc


def _kubeadm_shaped(prefix: str) -> dict:
    """Every optional section set away from its default: two control planes, dual stack."""
    doc = _example("cluster.yaml", prefix)
    doc["cluster"].update({"name": "shaped", "endpoint": "https://api.shaped.example:8443",
                           "service_cidr": "10.112.0.0/16", "domain": "corp.local", "apiserver_port": 8443})
    doc["pki"] = {"key_type": "rsa-2048", "leaf_ttl": "36h", "ca_ttl": "43800h"}
    doc["nodes"] = {
        "control_plane": [{"name": "cp-a", "ips": ["10.0.0.21", "fd00::21"], "sans": ["cp-a.shaped.example"]},
                          {"name": "cp-b", "ips": ["10.0.0.22"]}],
        "workers": [{"name": "w-1", "ips": ["fd00:0:0:0::31"]}],
    }
    doc["kubeconfigs"] = {"embed_client_certs": True}
    doc["service_account"] = {"key_type": "ec-p256", "grace_period": "72h"}
    doc["policy"] = {"max_leaf_ttl": "48h", "token_ttl": "30m", "token_max_ttl": "2h", "token_num_uses": 10,
                     "secret_id_ttl": "12h", "secret_id_num_uses": 1, "bind_cidrs": True}
    return doc


CASES = {
    "demo": lambda: _example("cluster.yaml", "golden-demo/"),
    "shaped": lambda: _kubeadm_shaped("golden-shaped/"),
    "hsm": lambda: _example("cluster-hsm.yaml", "golden-hsm/"),
}


def _scrub(value):
    """Random identifiers and the test server's port out of anything read back."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str):
        return _PORT.sub("127.0.0.1:<port>", _UUID.sub("<uuid>", value))
    return value


def _cli_json(env: dict[str, str], *args: str) -> dict:
    proc = run_cli(*args, "--output", "json", env=env, check=True)
    return json.loads(proc.stdout)


def _actions(report: dict) -> list[str]:
    return [f"{a['kind']} {a['target']}: {a.get('reason', '')}" for a in report["actions"]]


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, tmp_path: Path, vault_env: dict[str, str]) -> None:
    doc = CASES[case]()
    env = dict(vault_env)
    if "hsm" in doc:
        if not HAVE_SOFTHSM:
            pytest.skip("SoftHSM2 is not installed")
        doc["hsm"] = hsm_section(doc["hsm"]["key_type"], pin_env=PIN_ENV)
        env |= token_environ(init_dev_token(tmp_path / "token"))
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump(doc, sort_keys=False))
    prefix = doc["vault"]["mount_prefix"]
    _clean(env, prefix)

    policies = tmp_path / "policies"
    run_cli("policy", "render", "-c", str(cluster), "--dir", str(policies), check=True)
    applied = _cli_json(env, "policy", "apply", "-c", str(cluster))
    out = tmp_path / "out"
    first = _cli_json(env, "bootstrap", "-c", str(cluster), "-o", str(out))
    again = _cli_json(env, "bootstrap", "-c", str(cluster), "-o", str(out))
    review = _cli_json(env, "policy", "review", "-c", str(cluster), "--offline", "--dir", str(policies))
    creds = tmp_path / "creds"
    run_cli("node", "credentials", "-c", str(cluster), "--node", doc["nodes"]["workers"][0]["name"],
            "--out", str(creds), env=env, check=True)

    gateway = VaultGateway.from_env(env)
    slug = "vaultk8s-" + prefix.replace("/", "-")
    manifest = {
        "policies": {p.name: p.read_text() for p in sorted(policies.iterdir())},
        "policy_apply": _actions(applied),
        "bootstrap_first": _actions(first),
        "bootstrap_again": _actions(again),
        "review": review,
        "tree": tree_manifest(out),
        "credentials": tree_manifest(creds, contents=False),
        "vault": vault_manifest(
            gateway, [f"{prefix}{ca}" for ca in ("kubernetes-ca", "etcd-ca", "front-proxy-ca")], f"{prefix}approle",
            sorted(n for n in gateway.list_token_roles() if n.startswith(slug)),
            sorted(n for n in gateway.list_entity_names() if n.startswith(slug)), f"{prefix}cert", f"{prefix}jwt"),
    }
    manifest = _scrub(manifest)
    golden = GOLDEN / f"{case}.json"
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    expected = json.loads(golden.read_text())
    for section in sorted(set(expected) | set(manifest)):
        assert manifest.get(section) == expected.get(section), f"{case}: {section} differs from {golden}"


def _clean(env: dict[str, str], prefix: str) -> None:
    """A re-run on the same session server starts from nothing under this prefix."""
    gateway = VaultGateway.from_env(env)
    for path in list(gateway.client.sys.list_mounted_secrets_engines()["data"]):
        if path.startswith(prefix):
            gateway.client.sys.disable_secrets_engine(path)
    for path in list(gateway.client.sys.list_auth_methods()["data"]):
        if path.startswith(prefix):
            gateway.client.sys.disable_auth_method(path)
