"""After a fault: what a converged cluster looks like in Vault and on disk (HA and crash tests)."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import requests

from tests.helpers.cluster import run_cli
from vaultk8s import catalog, crypto
from vaultk8s.config import load_config
from vaultk8s.ops.bootstrap import bootstrap as ops_bootstrap
from vaultk8s.ops.check import check_out_dir
from vaultk8s.vault.gateway import VaultGateway
from vaultk8s.plan.resolve import resolve_all


class VaultView:
    """Raw admin reads, answered by the active node: a standby answers from its own raft replica,
    which can lag a write made a moment ago (a config just written read back as 404)."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def get(self, path: str, method: str = "GET") -> dict:
        resp = requests.request(method, f"{self._active_addr()}/v1/{path}", timeout=30,
                                headers={"X-Vault-Token": self.env["VAULT_TOKEN"]}, verify=self.env["VAULT_CACERT"])
        if resp.status_code == 404:
            return {}
        resp.raise_for_status()
        return resp.json()

    def _active_addr(self) -> str:
        """The leader's address as VAULT_ADDR's node knows it; that node itself on one node or mid-election."""
        addr = self.env["VAULT_ADDR"]
        leader = requests.get(f"{addr}/v1/sys/leader", timeout=30, verify=self.env["VAULT_CACERT"]).json()
        if leader.get("ha_enabled") and not leader.get("is_self") and leader.get("leader_address"):
            return leader["leader_address"]
        return addr

    def issuers(self, mount: str) -> list[str]:
        return sorted((self.get(f"{mount}/issuers", "LIST").get("data") or {}).get("keys") or [])

    def sa_state(self, config_path: Path) -> tuple[dict, int]:
        """(the key set document, how many KV versions exist) of the service-account secret."""
        settings = load_config(config_path).service_account
        data = self.get(f"{settings.kv_mount}/data/{settings.kv_path}").get("data") or {}
        meta = self.get(f"{settings.kv_mount}/metadata/{settings.kv_path}").get("data") or {}
        return data.get("data") or {}, len(meta.get("versions") or {})


def bootstrap(config_path: Path, out: Path, env: dict[str, str], *extra: str):
    return run_cli("bootstrap", "-c", str(config_path), "-o", str(out), *extra, env=env, timeout=900)


def assert_converged(config_path: Path, out: Path, env: dict[str, str], *, sa_doc: dict | None = None) -> dict:
    """A re-run (the CLI) succeeds, then a dry run plans nothing; returns the SA key set.

    Checked: one issuer per CA mount, one KV version of the SA key set (equal to sa_doc when
    given), every pki/ pair consistent on disk, no certificate with a problem (ops.check, what
    `certs check` runs: expiry, chain to the CA file, key match).
    """
    first = bootstrap(config_path, out, env)
    assert first.returncode == 0, first.stderr[-2000:]
    config = load_config(config_path)
    now = datetime.now(timezone.utc)
    noop = ops_bootstrap(config, out, VaultGateway.from_env(env), now=now, dry_run=True)
    assert not noop.actions, f"not converged: {[a.to_dict() for a in noop.actions][:5]}"
    view = VaultView(env)
    for ca in catalog.CAS:
        assert len(view.issuers(config.mount(ca.name))) == 1, f"{ca.name}: a second issuer appeared"
    doc, versions = view.sa_state(config_path)
    assert doc and versions == 1, f"service-account key set has {versions} versions"
    if sa_doc is not None:
        assert doc == sa_doc, "the service-account key set was replaced"
    problems = [(r.node, r.file, r.problems) for r in check_out_dir(out, now) if r.problems]
    assert not problems, problems[:5]
    assert_disk_consistent(out, config_path)
    return doc


def assert_disk_consistent(out: Path, config_path: Path) -> None:
    """Every pki/ is one published version: no stray version dirs, no temp file readable by others,
    and every certificate the catalog puts on disk has its matching key beside it (via the symlinks)."""
    for pki in sorted(out.glob("*/pki")):
        versions = [p for p in pki.iterdir() if p.name.startswith("..") and p.is_dir() and not p.is_symlink()]
        assert len(versions) <= 1, f"{pki}: versioned dirs pile up: {sorted(v.name for v in versions)}"
    for path in out.rglob("*"):
        if path.name.endswith(".tmp") or path.name.startswith(".probe-"):
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            assert not mode & 0o077, f"temp file {path} is readable by others ({oct(mode)})"
    assert_pairs_match(out, config_path)


def assert_pairs_match(out: Path, config_path: Path) -> int:
    """Every visible certificate has its matching key; returns how many pairs were checked."""
    checked = 0
    for rc in resolve_all(load_config(config_path)):
        pki = out / rc.node / "pki"
        cert_file, key_file = pki / rc.cert_file, pki / rc.key_file
        if not cert_file.exists():
            continue  # not written yet (a key without its cert is harmless: nothing loads it alone)
        assert key_file.exists(), f"{rc.node}: {rc.cert_file} is visible without its key"
        cert = crypto.load_certs(cert_file.read_bytes())[0]
        assert crypto.key_matches(cert, crypto.load_key(key_file.read_bytes())), f"{cert_file}: key does not match"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, f"{key_file} is not 0600"
        checked += 1
    return checked
