"""A corpus of bad input across every command, run as an operator would (subprocesses, a real
OpenBao, a real SoftHSM token). Each case must: exit non-zero; print one bounded line naming the
culprit and no traceback; leak no secret (token, PIN, password); write nothing to the output
directory; and, over the whole corpus, change nothing in Vault.

The cases are classes, not examples: broken files, hostile YAML, invalid sections, endpoints,
environment, flags, output trees, HSM settings and agent options, each on several commands.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
import yaml

from tests.helpers.cluster import run_cli
from tests.helpers.hsm import HAVE_SOFTHSM, hsm_section, init_dev_token, token_environ

pytestmark = pytest.mark.integration

MAX_LINE = 1200
PASSWORD = "hunter2-corpus"
WRONG_PIN = "wrong-pin-4471"


def _base_doc(prefix: str) -> dict[str, Any]:
    return {
        "cluster": {"name": "corpus", "endpoint": "https://10.0.0.10:6443"},
        "pki": {"key_type": "ec-p256", "leaf_ttl": "24h"},
        "vault": {"mount_prefix": prefix},
        "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}],
                  "workers": [{"name": "worker-1", "ips": ["10.0.1.1"]}]},
    }


def _edit(**changes: Any) -> Callable[[dict], dict]:
    """A change to the base document: dotted keys, None deletes."""
    def apply(doc: dict) -> dict:
        for dotted, value in changes.items():
            *parents, last = dotted.split(".")
            target = doc
            for p in parents:
                target = target.setdefault(p, {})
            if value is None:
                target.pop(last, None)
            else:
                target[last] = value
        return doc
    return apply


# --- cluster files: (id, text or doc edit, what the message must name) ----------------------------

def _text(body: str | bytes) -> Callable[[dict], str | bytes]:
    return lambda _doc: body


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8))

CONFIG_CASES: list[tuple[str, Callable, str]] = [
    ("binary-file", _text(os.urandom(512) + b"\x00\xff"), "UTF-8"),
    ("nul-bytes", _text("cluster:\x00 {}\n"), "NUL"),
    ("empty-file", _text(""), "mapping"),
    ("a-list", _text("- a\n- b\n"), "mapping"),
    ("a-scalar", _text("just words\n"), "mapping"),
    ("yaml-syntax", _text("cluster: {name: [x\n"), "not valid YAML"),
    ("tab-indent", _text("cluster:\n\tname: x\n"), "not valid YAML"),
    ("alias-bomb", _text(ALIAS_BOMB), "aliases"),
    ("deep-nesting", _text("cluster: " + "[" * 2000 + "]" * 2000 + "\n"), "nested too deeply"),
    ("duplicate-top-key", _text("cluster: {name: a}\ncluster: {name: b}\n"), "duplicate key 'cluster'"),
    ("duplicate-nested-key", _text("cluster: {name: a, name: b}\n"), "duplicate key 'name'"),
    ("huge-value", _edit(**{"cluster.name": "x" * 5_000_000}), "cluster.name"),
    ("newline-in-value", _edit(**{"cluster.name": "bad\nname\rwith\x1bcontrol"}), "cluster.name"),
    ("non-string-key", _text("cluster: {name: a}\n1: 2\n"), "unknown top-level key 1"),
    ("agent-section", _edit(agent={"idle": "1h"}), "unknown top-level key 'agent'"),
    ("unknown-top-key", _edit(clusters={}), "unknown top-level key 'clusters'"),
    ("unknown-nested-key", _edit(**{"pki.keytype": "ec-p256"}), "pki.keytype"),
    ("missing-cluster", _edit(cluster=None), "missing section 'cluster'"),
    ("missing-nodes", _edit(nodes=None), "missing section 'nodes'"),
    ("cluster-not-mapping", _edit(cluster="demo"), "cluster must be a mapping"),
    ("bad-cluster-name", _edit(**{"cluster.name": "Demo_1"}), "cluster.name"),
    ("endpoint-port-0", _edit(**{"cluster.endpoint": "https://10.0.0.10:0"}), "port 0"),
    ("endpoint-port-big", _edit(**{"cluster.endpoint": "https://10.0.0.10:70000"}), "cluster.endpoint"),
    ("endpoint-query", _edit(**{"cluster.endpoint": "https://10.0.0.10:6443/?debug=1"}), "query"),
    ("endpoint-fragment", _edit(**{"cluster.endpoint": "https://10.0.0.10:6443#x"}), "fragment"),
    ("endpoint-userinfo", _edit(**{"cluster.endpoint": f"https://admin:{PASSWORD}@10.0.0.10:6443"}), "password"),
    ("endpoint-http", _edit(**{"cluster.endpoint": "http://10.0.0.10:6443"}), "cluster.endpoint"),
    ("endpoint-path", _edit(**{"cluster.endpoint": "https://10.0.0.10:6443/k8s"}), "cluster.endpoint"),
    ("endpoint-bad-host", _edit(**{"cluster.endpoint": "https://under_score:6443"}), "cluster.endpoint"),
    ("endpoint-list", _edit(**{"cluster.endpoint": ["https://a:1"]}), "cluster.endpoint"),
    ("service-cidr-host-bits", _edit(**{"cluster.service_cidr": "10.96.0.1/12"}), "cluster.service_cidr"),
    ("apiserver-port-0", _edit(**{"cluster.apiserver_port": 0}), "cluster.apiserver_port"),
    ("apiserver-port-str", _edit(**{"cluster.apiserver_port": "6443"}), "cluster.apiserver_port"),
    ("key-type", _edit(**{"pki.key_type": "dsa-1024"}), "pki.key_type"),
    ("key-type-list", _edit(**{"pki.key_type": ["ec-p256"]}), "pki.key_type"),
    ("leaf-ttl-short", _edit(**{"pki.leaf_ttl": "1m"}), "pki.leaf_ttl"),
    ("leaf-ttl-garbage", _edit(**{"pki.leaf_ttl": "a day"}), "pki.leaf_ttl"),
    ("leaf-over-ca", _edit(**{"pki.leaf_ttl": "900000h"}), "pki.leaf_ttl"),
    ("prefix-reserved", _edit(**{"vault.mount_prefix": "sys/"}), "vault.mount_prefix"),
    ("prefix-no-slash", _edit(**{"vault.mount_prefix": "clusters"}), "vault.mount_prefix"),
    ("prefix-dotdot", _edit(**{"vault.mount_prefix": "../x/"}), "vault.mount_prefix"),
    ("no-control-plane", _edit(**{"nodes.control_plane": []}), "nodes.control_plane"),
    ("node-upper", _edit(**{"nodes.workers": [{"name": "Worker-1", "ips": ["10.0.1.1"]}]}), "Worker-1"),
    ("node-name-53", _edit(**{"nodes.workers": [{"name": "w" * 53, "ips": ["10.0.1.1"]}]}), "at most 52"),
    ("node-name-300", _edit(**{"nodes.workers": [{"name": "w" * 300, "ips": ["10.0.1.1"]}]}), "nodes.workers[0]"),
    ("node-dup-name", _edit(**{"nodes.workers": [{"name": "cp-1", "ips": ["10.0.1.1"]}]}), "more than once"),
    ("node-dup-ip", _edit(**{"nodes.workers": [{"name": "w", "ips": ["10.0.0.11"]}]}), "10.0.0.11"),
    ("node-bad-ip", _edit(**{"nodes.workers": [{"name": "w", "ips": ["10.0.1.300"]}]}), "10.0.1.300"),
    ("node-no-ips", _edit(**{"nodes.workers": [{"name": "w"}]}), "ips"),
    ("node-wildcard-san", _edit(**{"nodes.workers": [{"name": "w", "ips": ["10.0.1.1"], "sans": ["*.x.io"]}]}),
     "*.x.io"),
    ("node-unknown-key", _edit(**{"nodes.workers": [{"name": "w", "ips": ["10.0.1.1"], "role": "x"}]}), "role"),
    ("node-role-collision", _edit(**{"nodes.control_plane": [{"name": "kubelet-client", "ips": ["10.0.0.11"]}]}),
     "collide"),
    ("many-problems", _edit(**{"nodes.workers": [{"name": f"W{i}", "ips": ["x"]} for i in range(5000)]}),
     "more problem(s)"),
    ("sa-key-type", _edit(service_account={"key_type": "dsa"}), "service_account.key_type"),
    ("sa-grace-short", _edit(service_account={"grace_period": "10m"}), "service_account.grace_period"),
    ("sa-kv-mount", _edit(service_account={"kv_mount": "sys/x"}), "service_account.kv_mount"),
    ("sa-unknown-key", _edit(service_account={"rotate": True}), "service_account.rotate"),
    ("sa-not-mapping", _edit(service_account="rsa"), "service_account"),
    ("policy-unknown-key", _edit(policy={"bind": True}), "policy.bind"),
    ("policy-ttl-order", _edit(policy={"token_ttl": "8h", "token_max_ttl": "1h"}), "policy.token_ttl"),
    ("policy-negative", _edit(policy={"token_num_uses": -1}), "policy.token_num_uses"),
    ("hsm-unknown-key", _edit(hsm={**hsm_section("ec-p256"), "pin": "1234"}), "hsm"),
    ("hsm-key-type", _edit(hsm={**hsm_section("ec-p256"), "key_type": "ed448"}), "hsm.key_type"),
]

# Commands that read a cluster file: every config case runs on bootstrap, a sample on the others.
CONFIG_COMMANDS: dict[str, list[str]] = {
    "policy-diff": ["policy", "diff"],
    "policy-apply": ["policy", "apply"],
    "policy-review": ["policy", "review"],
    "sa-status": ["sa", "status"],
    "sa-rotate": ["sa", "rotate", "--phase", "stage", "--out", "{out}"],
    "node-credentials": ["node", "credentials", "--node", "worker-1", "--out", "{out}"],
    "agent": ["agent", "--node", "worker-1", "--out", "{out}", "--once"],
    "hsm-status": ["hsm", "status"],
    "ca-rotate": ["ca", "rotate", "--ca", "etcd-ca", "--phase", "stage", "--out", "{out}"],
    "ca-status": ["ca", "status", "--out", "{out}"],
}
SAMPLED = ["binary-file", "alias-bomb", "deep-nesting", "duplicate-top-key", "huge-value", "endpoint-userinfo",
           "node-name-53", "sa-grace-short"]


@dataclass
class Case:
    id: str
    args: list[str]
    expect: str
    doc: Callable | None = None  # edits the base cluster file, or returns its raw text
    env: dict[str, str | None] = field(default_factory=dict)  # None removes the variable
    setup: Callable[[Path], None] | None = None  # prepares tmp (before the run)
    out_may_exist: bool = False  # the output is an input here (certs check): it must be unchanged
    exit_codes: tuple[int, ...] = ()  # () means any non-zero


def _cases() -> list[Case]:
    cases = [Case(f"bootstrap-{cid}", ["bootstrap", "--out", "{out}"], expect, doc) for cid, doc, expect in CONFIG_CASES]
    for cmd_id, args in CONFIG_COMMANDS.items():
        cases += [Case(f"{cmd_id}-{cid}", list(args), expect, doc)
                  for cid, doc, expect in CONFIG_CASES if cid in SAMPLED]
    return cases + _env_cases() + _flag_cases() + _tree_cases() + _hsm_cases() + _agent_cases() + _signer_cases() + _dev_cases()


def _env_cases() -> list[Case]:
    boot = ["bootstrap", "--out", "{out}"]
    return [
        Case("env-addr-unset", boot, "VAULT_ADDR is not set", env={"VAULT_ADDR": None}),
        Case("env-addr-garbage", boot, "VAULT_ADDR", env={"VAULT_ADDR": "not a url"}),
        Case("env-addr-ftp", boot, "VAULT_ADDR", env={"VAULT_ADDR": "ftp://127.0.0.1:1"}),
        Case("env-addr-port-0", boot, "VAULT_ADDR", env={"VAULT_ADDR": "https://127.0.0.1:0"}),
        Case("env-addr-port-big", boot, "VAULT_ADDR", env={"VAULT_ADDR": "https://127.0.0.1:70000"}),
        Case("env-addr-userinfo", boot, "VAULT_ADDR must not hold",
             env={"VAULT_ADDR": f"https://root:{PASSWORD}@127.0.0.1:8200"}),
        Case("env-addr-http-on-tls", boot, "did not answer as the Vault API", env={"VAULT_ADDR": "{http_addr}"}),
        Case("env-addr-closed-port", boot, "cannot reach Vault", env={"VAULT_ADDR": "https://127.0.0.1:{closed}"}),
        Case("env-token-newline", boot, "VAULT_TOKEN holds whitespace", env={"VAULT_TOKEN": "{token}\n"}),
        Case("env-token-space", boot, "VAULT_TOKEN holds whitespace", env={"VAULT_TOKEN": " {token}"}),
        Case("env-token-wrong", boot, "403", env={"VAULT_TOKEN": "s.not-a-real-token-corpus"}),
        Case("env-token-unset", boot, "VAULT_TOKEN", env={"VAULT_TOKEN": None}),
        Case("env-cacert-missing", boot, "VAULT_CACERT", env={"VAULT_CACERT": "{tmp}/no-such-ca.pem"}),
        Case("env-cacert-not-pem", boot, "VAULT_CACERT", env={"VAULT_CACERT": "{tmp}/garbage.pem"},
             setup=lambda t: (t / "garbage.pem").write_text("not a certificate\n")),
        Case("env-cacert-directory", boot, "VAULT_CACERT", env={"VAULT_CACERT": "{tmp}"}),
        Case("env-cacert-wrong-ca", boot, "TLS verification", env={"VAULT_CACERT": "{tmp}/other-ca.pem"},
             setup=_other_ca),
        Case("env-bao-token-newline", boot, "VAULT_TOKEN holds whitespace",
             env={"VAULT_TOKEN": None, "BAO_TOKEN": "{token}\n"}),
        Case("policy-diff-token-wrong", ["policy", "diff"], "403", env={"VAULT_TOKEN": "s.corpus-wrong"}),
        Case("sa-status-addr-unset", ["sa", "status"], "VAULT_ADDR", env={"VAULT_ADDR": None}),
        Case("node-revoke-closed-port", ["node", "revoke", "--node", "worker-1"], "cannot reach Vault",
             env={"VAULT_ADDR": "https://127.0.0.1:{closed}"}),
    ]


def _flag_cases() -> list[Case]:
    return [
        Case("flag-workers-0", ["bootstrap", "--out", "{out}", "--workers", "0"], "--workers", exit_codes=(2,)),
        Case("flag-workers-big", ["bootstrap", "--out", "{out}", "--workers", "100000"], "--workers", exit_codes=(2,)),
        Case("flag-workers-word", ["bootstrap", "--out", "{out}", "--workers", "many"], "--workers", exit_codes=(2,)),
        Case("flag-output-yaml", ["bootstrap", "--out", "{out}", "--output", "yaml"], "--output", exit_codes=(2,)),
        Case("flag-missing-out", ["bootstrap"], "--out", exit_codes=(2,)),
        Case("flag-unknown", ["bootstrap", "--out", "{out}", "--force"], "--force", exit_codes=(2,)),
        Case("flag-config-missing", ["bootstrap", "--out", "{out}", "--config", "{tmp}/nope.yaml"], "nope.yaml"),
        Case("flag-config-dir", ["bootstrap", "--out", "{out}", "--config", "{tmp}"], "directory"),
        Case("flag-out-is-file", ["bootstrap", "--out", "{tmp}/afile"], "afile",
             setup=lambda t: (t / "afile").write_text("x")),
        Case("flag-out-under-file", ["bootstrap", "--out", "{tmp}/afile/out"], "not a directory",
             setup=lambda t: (t / "afile").write_text("x")),
        Case("flag-unknown-command", ["bootstrapp"], "bootstrapp", exit_codes=(2,)),
        Case("flag-sa-phase", ["sa", "rotate", "--out", "{out}", "--phase", "later"], "--phase", exit_codes=(2,)),
        Case("flag-node-unknown", ["node", "credentials", "--node", "worker-9", "--out", "{out}"], "worker-9"),
        Case("flag-revoke-unknown", ["node", "revoke", "--node", "cp-9"], "cp-9"),
        Case("flag-review-output", ["policy", "review", "--output", "pdf"], "--output", exit_codes=(2,)),
        Case("flag-review-dir-missing", ["policy", "review", "--offline", "--dir", "{tmp}/nopolicies"], "nopolicies"),
        Case("state-sa-not-bootstrapped", ["sa", "rotate", "--out", "{out}", "--phase", "stage"], "bootstrap"),
        Case("flag-ca-name", ["ca", "rotate", "--out", "{out}", "--ca", "nope-ca", "--phase", "stage"], "nope-ca",
             exit_codes=(2,)),
        Case("flag-ca-phase", ["ca", "rotate", "--out", "{out}", "--ca", "etcd-ca", "--phase", "later"], "--phase",
             exit_codes=(2,)),
        Case("state-ca-not-bootstrapped", ["ca", "rotate", "--out", "{out}", "--ca", "etcd-ca", "--phase", "stage"],
             "bootstrap", exit_codes=(6,)),
        Case("state-sa-status-not-bootstrapped", ["sa", "status"], "bootstrap"),
        Case("state-node-not-applied", ["node", "credentials", "--node", "worker-1", "--out", "{out}"],
             "policy apply"),
    ]


def _tree_cases() -> list[Case]:
    check = ["certs", "check", "--out", "{out}"]

    def dangling(t: Path) -> None:
        pki = t / "out" / "cp-1" / "pki"
        pki.mkdir(parents=True)
        (pki / "..data").symlink_to("..2026_12_01_gone")
        (pki / "ca.crt").symlink_to("..data/ca.crt")

    def bad_bundle(t: Path) -> None:
        pki = t / "out" / "cp-1" / "pki"
        pki.mkdir(parents=True)
        (pki / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")

    def empty_pki(t: Path) -> None:
        (t / "out" / "cp-1" / "pki").mkdir(parents=True)

    return [
        Case("certs-missing-dir", check, "does not exist"),
        Case("certs-empty-dir", check, "no node directories", setup=lambda t: (t / "out").mkdir(),
             out_may_exist=True),
        Case("certs-dangling-data", check, "missing version directory", setup=dangling, out_may_exist=True),
        Case("certs-unreadable-bundle", check, "unreadable CA bundle", setup=bad_bundle, out_may_exist=True),
        Case("certs-empty-pki", check, "no certificates", setup=empty_pki, out_may_exist=True),
        Case("certs-output-flag", [*check, "--output", "xml"], "--output", exit_codes=(2,)),
    ]


def _hsm_cases() -> list[Case]:
    if not HAVE_SOFTHSM:
        return []
    hsm = _edit(hsm=hsm_section("ec-p256"))
    boot = ["bootstrap", "--out", "{out}"]
    return [
        Case("hsm-status-no-block", ["hsm", "status"], "hsm"),
        Case("hsm-conf-missing", ["hsm", "status"], "SOFTHSM2_CONF", hsm, env={"SOFTHSM2_CONF": "{tmp}/none.conf"}),
        Case("hsm-module-missing", ["hsm", "status"], "libnothing.so",
             _edit(hsm={**hsm_section("ec-p256"), "module": "/usr/lib/libnothing.so"})),
        Case("hsm-wrong-pin", ["hsm", "status"], "PIN", hsm, env={"VAULTK8S_TEST_HSM_PIN": WRONG_PIN}),
        Case("hsm-pin-unset", ["hsm", "status"], "VAULTK8S_TEST_HSM_PIN", hsm, env={"VAULTK8S_TEST_HSM_PIN": None}),
        Case("hsm-token-absent", ["hsm", "status"], "no-such-token",
             _edit(hsm={**hsm_section("ec-p256"), "token_label": "no-such-token"})),
        Case("hsm-bootstrap-wrong-pin", boot, "PIN", hsm, env={"VAULTK8S_TEST_HSM_PIN": WRONG_PIN}),
        Case("hsm-bootstrap-conf-missing", boot, "SOFTHSM2_CONF", hsm, env={"SOFTHSM2_CONF": "{tmp}/none.conf"}),
        Case("hsm-pin-file-open", ["hsm", "status"], "PIN file",
             _edit(hsm={**{k: v for k, v in hsm_section("ec-p256").items() if k != "pin_env"},
                        "pin_file": "{tmp}/pin"}), setup=lambda t: ((t / "pin").write_text("1234"),
                                                                   (t / "pin").chmod(0o644))),
    ]


def _agent_cases() -> list[Case]:
    base = ["agent", "--node", "worker-1", "--out", "{out}", "--once"]
    return [
        Case("agent-exec-quote", [*base, "--exec", "systemctl reload 'kubelet"], "--exec"),
        Case("agent-metrics-port-big", [*base, "--metrics-port", "70000"], "metrics", exit_codes=(2,)),
        Case("agent-metrics-port-used", ["agent", "--node", "worker-1", "--out", "{out}",
                                         "--metrics-port", "{busy}"], "{busy}"),
        Case("agent-idle", [*base, "--idle", "soon"], "--idle"),
        Case("agent-no-out", ["agent", "--node", "worker-1", "--once"], "--out"),
        Case("agent-unknown-node", ["agent", "--node", "worker-7", "--out", "{out}", "--once"], "worker-7"),
        Case("agent-credentials-missing", [*base, "--credentials", "{tmp}/nocreds"], "nocreds"),
        Case("agent-token-file-missing", [*base, "--token-file", "{tmp}/notoken"], "notoken"),
        Case("agent-metrics-addr-host", [*base, "--metrics-addr", "nohost"], "--metrics-addr"),
        Case("agent-metrics-addr-and-port", [*base, "--metrics-addr", "127.0.0.1:1", "--metrics-port", "2"],
             "--metrics"),
        Case("agent-reload-signal-kill", [*base, "--pid-file", "{tmp}/pid", "--reload-signal", "KILL"], "KILL"),
        Case("agent-reload-signal-bogus", [*base, "--pid-file", "{tmp}/pid", "--reload-signal", "WAKE"], "WAKE"),
    ]


def _signer_cases() -> list[Case]:
    return [
        Case("signer-kubeconfig-missing", ["signer", "--kubeconfig", "{tmp}/nokube.conf"], "nokube.conf"),
        Case("signer-kubeconfig-garbage", ["signer", "--kubeconfig", "{tmp}/garbage.conf"], "garbage.conf",
             setup=lambda t: (t / "garbage.conf").write_text("::: not yaml {{\n")),
        Case("signer-metrics-addr", ["signer", "--kubeconfig", "{tmp}/nokube.conf", "--metrics-addr", "x:y"],
             "--metrics-addr"),
        Case("signer-credentials-missing", ["signer", "--kubeconfig", "{tmp}/nokube.conf", "--credentials",
                                            "{tmp}/nocreds"], "nocreds"),
        Case("signer-credentials-not-applied", ["signer-credentials", "--out", "{out}"], "policy apply"),
        Case("signer-credentials-addr-unset", ["signer-credentials", "--out", "{out}"], "VAULT_ADDR",
             env={"VAULT_ADDR": None}),
        Case("signer-bad-config", ["signer", "--kubeconfig", "{tmp}/nokube.conf"], "duplicate key",
             _text("cluster: {name: a}\ncluster: {name: b}\n")),
        Case("kubeconfigs-embed-not-bool", ["bootstrap", "--out", "{out}"], "kubeconfigs.embed_client_certs",
             _edit(kubeconfigs={"embed_client_certs": "yes please"})),
    ]


def _dev_cases() -> list[Case]:
    return [
        Case("dev-up-port-big", ["dev", "up", "--state-dir", "{tmp}/dev", "--port", "70000"], "--port", exit_codes=(2,)),
        Case("dev-up-state-is-file", ["dev", "up", "--state-dir", "{tmp}/afile"], "afile",
             setup=lambda t: (t / "afile").write_text("x")),
        Case("dev-env-nothing", ["dev", "env", "--state-dir", "{tmp}/nodev"], "nodev"),
    ]


def _other_ca(tmp: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "other CA")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    (tmp / "other-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# --- running ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    case: Case
    tmp: Path
    returncode: int
    stdout: str
    stderr: str
    secrets: tuple[str, ...]
    expect: str


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(path: Path) -> list[tuple[str, int, bytes]]:
    if not path.exists() and not path.is_symlink():
        return []
    items = []
    for p in sorted(path.rglob("*")):
        data = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        items.append((str(p.relative_to(path)), p.lstat().st_mode, data))
    return items


def _vault_snapshot(env: dict[str, str]) -> dict[str, Any]:
    def get(path: str) -> Any:
        r = requests.request("LIST" if path.endswith("/") else "GET", f"{env['VAULT_ADDR']}/v1/{path}",
                             headers={"X-Vault-Token": env["VAULT_TOKEN"]}, verify=env["VAULT_CACERT"], timeout=30)
        return r.json().get("data") if r.ok else r.status_code
    return {"mounts": sorted(get("sys/mounts")), "auth": sorted(get("sys/auth")),
            "policies": sorted(get("sys/policies/acl/")["keys"])}


def _run(case: Case, root: Path, vault: dict[str, str], hsm_env: dict[str, str], busy_port: int) -> Outcome:
    tmp = root / case.id
    tmp.mkdir()
    prefix = f"corpus-{case.id}/".replace("_", "-")
    subs = {"{out}": str(tmp / "out"), "{tmp}": str(tmp), "{token}": vault["VAULT_TOKEN"],
            "{http_addr}": vault["VAULT_ADDR"].replace("https://", "http://"), "{closed}": str(_closed_port()),
            "{busy}": str(busy_port)}

    def fill(text: str) -> str:
        for k, v in subs.items():
            text = text.replace(k, v)
        return text

    doc = case.doc(_base_doc(prefix)) if case.doc else _base_doc(prefix)
    config = tmp / "cluster.yaml"
    if isinstance(doc, bytes):
        config.write_bytes(doc)
    elif isinstance(doc, str):
        config.write_text(doc)
    else:
        config.write_text(fill(yaml.safe_dump(doc, width=10_000_000)))
    if case.setup:
        case.setup(tmp)
    args = [fill(a) for a in case.args]
    if args[0] not in ("certs", "dev") and "--config" not in args:
        args += ["--config", str(config)]
    env: dict[str, str] = {**vault, **hsm_env}
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = fill(value)
    # run_cli drops this process's VAULT_* and BAO_*: a removed variable stays removed.
    before = _tree(tmp / "out")
    proc = run_cli(*args, env=env, timeout=120)
    assert _tree(tmp / "out") == before, f"{case.id}: the output directory changed"
    secrets = (vault["VAULT_TOKEN"], PASSWORD, hsm_env.get("VAULTK8S_TEST_HSM_PIN", "\0"), WRONG_PIN)
    return Outcome(case, tmp, proc.returncode, proc.stdout, proc.stderr, secrets, fill(case.expect))


CASES = _cases()


@pytest.fixture(scope="module")
def outcomes(openbao, tmp_path_factory, request) -> dict[str, Outcome]:
    """Every selected case, four at a time (each is its own process); Vault must be the same afterwards."""
    selected = {item.callspec.params["case_id"] for item in request.session.items
                if getattr(item, "callspec", None) and "case_id" in item.callspec.params}
    cases = [c for c in CASES if c.id in selected]
    root = tmp_path_factory.mktemp("corpus")
    vault = openbao.as_environ()
    hsm_env = token_environ(init_dev_token(root / "hsm")) if HAVE_SOFTHSM else {}
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        before = _vault_snapshot(vault)
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda c: _run(c, root, vault, hsm_env, busy.getsockname()[1]), cases))
        after = _vault_snapshot(vault)
    finally:
        busy.close()
    assert after == before, "the corpus changed Vault"
    return {o.case.id: o for o in results}


def test_corpus_is_large_and_covers_every_command():
    assert len(CASES) >= 100
    commands = {c.args[0] if c.args[0] not in ("policy", "sa", "node", "certs", "hsm", "dev", "ca")
                else " ".join(c.args[:2]) for c in CASES}
    assert {"bootstrap", "agent", "certs check", "hsm status", "sa rotate", "sa status", "policy diff",
            "policy apply", "policy review", "node credentials", "node revoke", "dev up", "signer",
            "signer-credentials", "ca rotate", "ca status"} <= commands
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_input_fails_with_one_clear_line(outcomes, case_id):
    o = outcomes[case_id]
    output = o.stdout + o.stderr
    assert o.returncode != 0, f"exit 0: {output[-500:]}"
    if o.case.exit_codes:
        assert o.returncode in o.case.exit_codes, (o.returncode, output[-500:])
    assert "Traceback" not in output and "unexpected " not in output, output[-1500:]
    lines = [line for line in o.stderr.splitlines() if line.strip()]
    if o.case.id.startswith("certs-") and o.returncode == 1 and not lines:
        lines = [line for line in o.stdout.splitlines() if o.expect in line]  # the report names the file
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {o.stderr[:800]!r}"
    assert len(lines[0]) <= MAX_LINE, f"{len(lines[0])} characters"
    assert o.expect.lower() in lines[0].lower(), f"{o.expect!r} not named in: {lines[0]}"
    for secret in o.secrets:
        assert secret not in output, "a secret reached the output"
