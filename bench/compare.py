"""vaultk8s bootstrap side by side with the Vault floor and a cfssl loop, against one fresh OpenBao.

    python3 bench/compare.py --workers N [--key-type ec-p256|rsa-2048] [--control-planes 3]
                             [--concurrency C] [--profile FILE] [--no-cfssl]

Order of the run (one local OpenBao, raft + TLS, from vaultk8s.dev.DevServer):
1. floor: a bare `requests` client, one keep-alive Session per thread, writes the same roles and
   signs the same number of pre-made CSRs through /sign, at 4, 8 and 16 threads; the best time of
   each phase counts (floor_s = best role writes + best signs). Runs first, so vaultk8s meets the
   larger raft store, not the floor.
2. `vaultk8s bootstrap` as an operator runs it (a subprocess, defaults unless --concurrency),
   then again (the no-op re-run, which must change nothing). Wall time and peak RSS per run.
3. no-op floor: the same roles read back (best of 4/8/16 threads) plus every file bootstrap wrote
   read and parsed once (certificates, keys, kubeconfigs).
4. cfssl loop: one `cfssl gencert` per certificate (same CNs, SANs, key type) against local CAs,
   its JSON output written to cert and key files, as the shell loop vaultk8s replaces did.
Prints one JSON line; see bench/README.md for numbers and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.ports import find_free_port  # noqa: E402
from tests.helpers.cluster import cluster_doc  # noqa: E402
from vaultk8s import catalog, crypto  # noqa: E402
from vaultk8s.config import parse_config  # noqa: E402
from vaultk8s.dev import DevServer  # noqa: E402
from vaultk8s.plan.cas import mount_ttl_seconds, root_params  # noqa: E402
from vaultk8s.plan.resolve import resolve_all  # noqa: E402
from vaultk8s.plan.roles import resolve_roles  # noqa: E402

FLOOR_THREADS = (4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1000, help="worker nodes in the cluster")
    parser.add_argument("--key-type", default="ec-p256", choices=("ec-p256", "rsa-2048"))
    parser.add_argument("--control-planes", type=int, default=3)
    parser.add_argument("--concurrency", type=int, help="pass --workers C to bootstrap (default: its own)")
    parser.add_argument("--profile", type=Path, help="sample the first bootstrap with py-spy into this file")
    parser.add_argument("--no-cfssl", action="store_true")
    parser.add_argument("--floor-threads", default="4,8,16", help="thread counts the floors try (best counts)")
    parser.add_argument("--work-dir", type=Path, help="run in this new directory and keep it (default: a temp "
                        "directory, removed at the end; see bench/README.md on deleting before a run)")
    args = parser.parse_args()
    args.work_dir = new_work_dir(parser, args.work_dir)
    with _work_dir(args.work_dir) as tmp:
        print_against_openbao(tmp, lambda env: run(env, tmp, args))


def print_against_openbao(tmp: Path, measure) -> None:
    """Start one local OpenBao under tmp, print measure(env) as one JSON line, stop it."""
    server = DevServer(tmp / "bao", port=find_free_port())
    env = server.up()
    try:
        print(json.dumps(measure(env)), flush=True)
    finally:
        server.down()


def new_work_dir(parser: argparse.ArgumentParser, path: Path | None) -> Path | None:
    """--work-dir made absolute (the child runs in REPO); one that exists is refused, not mixed into."""
    if path is None:
        return None
    if path.exists():
        parser.error(f"--work-dir {path} already exists: give a new directory")
    return path.resolve()


@contextlib.contextmanager
def _work_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="vaultk8s-bench-") as tmp:
        yield Path(tmp)


def run(env, tmp: Path, args) -> dict:
    load_before = os.getloadavg()[0]  # before this run's own load: the floors and bootstrap raise it
    doc = cluster_doc("bench/", workers=args.workers, control_planes=args.control_planes, key_type=args.key_type)
    cluster_file = tmp / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    certs = resolve_all(parse_config(doc))
    threads = tuple(int(t) for t in args.floor_threads.split(","))
    floor = run_floor(env, doc, args.key_type, threads)
    out = tmp / "out"
    first = run_bootstrap(env, cluster_file, out, args.concurrency, args.profile)
    noop = run_bootstrap(env, cluster_file, out, args.concurrency, None)
    if noop["report"]["changed"]:
        raise SystemExit("the no-op re-run changed something: " + json.dumps(noop["report"]["actions"][:3]))
    noop_floor = run_noop_floor(env, certs, out, threads)
    write_floor = run_write_floor(out, tmp / "write-floor")
    cfssl = {"cfssl_s": None, "cfssl_skipped": "--no-cfssl"} if args.no_cfssl else run_cfssl(certs, tmp / "cfssl")
    actions = first["report"]["actions"]
    result = {
        "workers": args.workers, "control_planes": args.control_planes, "key_type": args.key_type,
        "concurrency": args.concurrency or "default",
        "certificates": sum(a["kind"] == "issue" for a in actions),
        "roles": sum(a["kind"] == "write-role" for a in actions),
        "bootstrap_s": first["seconds"], "noop_s": noop["seconds"],
        "floor_s": floor["floor_s"], "noop_floor_s": noop_floor["noop_floor_s"],
        **{k: v for k, v in cfssl.items()},
        "peak_rss_mb": max(first["peak_rss_mb"], noop["peak_rss_mb"]),
        "peak_rss_first_mb": first["peak_rss_mb"], "peak_rss_noop_mb": noop["peak_rss_mb"],
        "write_floor_s": write_floor["write_floor_s"],
        "vaultk8s_over_floor": _ratio(first["seconds"], floor["floor_s"]),
        "vaultk8s_over_floor_and_writes": _ratio(first["seconds"], floor["floor_s"] + write_floor["write_floor_s"]),
        "noop_over_floor": _ratio(noop["seconds"], noop_floor["noop_floor_s"]),
        "cfssl_over_vaultk8s": _ratio(cfssl["cfssl_s"], first["seconds"]),
        "client_cpu_s": first["cpu_s"], "noop_client_cpu_s": noop["cpu_s"],
        "client_cpu_ms_per_cert": _per_cert_ms(first["cpu_s"], actions),
        "floor_cpu_ms_per_cert": floor["detail"]["cpu_ms_per_cert"],
        "noop_client_cpu_ms_per_cert": _per_cert_ms(noop["cpu_s"], actions),
        "client_user_s": first["user_s"], "client_system_s": first["system_s"],
        "machine_busy_cores": first["machine_busy_cores"], "machine_stolen_s": first["machine_stolen_s"],
        "noop_machine_busy_cores": noop["machine_busy_cores"],
        "tmpfs": _fs_type(tmp) == "tmpfs", "work_dir_fs": _fs_type(tmp),
        "phases_first_s": first["report"].get("phase_seconds"), "phases_noop_s": noop["report"].get("phase_seconds"),
        "phases_first_cpu_s": first["report"].get("phase_cpu_seconds"),
        "phases_noop_cpu_s": noop["report"].get("phase_cpu_seconds"),
        "file_threads_first": first["report"].get("file_threads"),
        "floor": floor["detail"], "noop_floor": noop_floor["detail"], "write_floor": write_floor["detail"],
        "cpus": os.cpu_count(), "load_before": load_before, "load_after": os.getloadavg()[0],
    }
    return result


def _per_cert_ms(cpu_s: float, actions: list[dict]) -> float | None:
    certificates = sum(a["kind"] == "issue" for a in actions)
    return round(1000 * cpu_s / certificates, 2) if certificates else None


def _fs_type(path: Path) -> str | None:
    """The file system the work directory is on (util-linux findmnt), e.g. tmpfs or ext4."""
    done = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)], capture_output=True, text=True)
    lines = done.stdout.split() if done.returncode == 0 else []
    return lines[-1] if lines else None  # the mount on top, where one is stacked on another


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


# --- the floor ----------------------------------------------------------------------------------

class _Bare:
    """A bare client: one keep-alive requests.Session per thread, no retries, no hvac."""

    def __init__(self, env):
        self.base = env.addr + "/v1/"
        self.headers = {"X-Vault-Token": env.token}
        self.verify = str(env.cacert)
        self._local = threading.local()

    def session(self) -> requests.Session:
        if not hasattr(self._local, "s"):
            s = requests.Session()
            s.headers.update(self.headers)
            self._local.s = s
        return self._local.s

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        # verify per request: a session-level verify loses to REQUESTS_CA_BUNDLE in requests
        r = self.session().request(method, self.base + path, json=body, timeout=60, verify=self.verify)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:200]}")
        return r.json() if r.content else {}


def _timed_map(threads: int, fn, items, cpu: dict | None = None, key=None) -> float:
    """Wall seconds of fn over items in `threads` threads; this process's CPU seconds into cpu[key]."""
    started, cpu_started = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fn, items))
    if cpu is not None:
        cpu[key] = round(time.process_time() - cpu_started, 2)
    return time.monotonic() - started


def run_floor(env, doc: dict, key_type: str, thread_counts=FLOOR_THREADS) -> dict:
    """Own mounts (floor/...), same role parameters, same CSR contents; untimed setup, timed calls."""
    floor_doc = {**doc, "vault": {"mount_prefix": "floor/"}}
    config = parse_config(floor_doc)
    bare = _Bare(env)
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        bare.call("POST", f"sys/mounts/{mount}", {"type": "pki", "config": {"max_lease_ttl": f"{mount_ttl_seconds(config)}s"}})
        bare.call("POST", f"{mount}/root/generate/internal", root_params(ca, config))
    certs = resolve_all(config)
    roles = resolve_roles(certs)
    with ProcessPoolExecutor() as makers:  # untimed set-up: RSA keys on every core
        made = makers.map(_premade_csr, [(key_type, rc.common_name, rc.organization, rc.dns_sans, rc.ip_sans)
                                         for rc in certs], chunksize=64)
        csrs = list(zip(certs, made))
    detail: dict = {"roles_s": {}, "sign_s": {}, "roles_cpu_s": {}, "sign_cpu_s": {}}
    for threads in thread_counts:
        suffix = f"-t{threads}"  # fresh roles per pass: every pass creates, none overwrites

        def write(role, suffix=suffix):
            bare.call("POST", f"{role.mount}/roles/{role.name}{suffix}", role.params)

        def sign(item, suffix=suffix):
            rc, csr = item
            bare.call("POST", f"{rc.mount}/sign/{rc.role}{suffix}", {
                "csr": csr, "ttl": f"{int(rc.ttl.total_seconds())}s", "exclude_cn_from_sans": True, "format": "pem"})

        detail["roles_s"][threads] = round(_timed_map(threads, write, roles, detail["roles_cpu_s"], threads), 2)
        detail["sign_s"][threads] = round(_timed_map(threads, sign, csrs, detail["sign_cpu_s"], threads), 2)
    best_roles, best_sign = min(detail["roles_s"].values()), min(detail["sign_s"].values())
    detail["role_writes_per_s"] = round(len(roles) / best_roles)
    detail["signs_per_s"] = round(len(csrs) / best_sign)
    calls_cpu = min(r + c for r, c in zip(detail["roles_cpu_s"].values(), detail["sign_cpu_s"].values()))
    detail["cpu_ms_per_call"] = round(1000 * calls_cpu / (len(roles) + len(csrs)), 2)  # the bare client's cost
    detail["cpu_ms_per_cert"] = round(1000 * calls_cpu / len(csrs), 2)
    return {"floor_s": round(best_roles + best_sign, 2), "detail": detail, "roles": roles}


def _premade_csr(args: tuple) -> str:
    key_type, common_name, organization, dns_sans, ip_sans = args
    return crypto.build_csr(crypto.generate_key(key_type), common_name, organization, dns_sans, ip_sans)


def run_noop_floor(env, certs, out: Path, thread_counts=FLOOR_THREADS) -> dict:
    """Read the bench/ roles back at the best of 4/8/16 threads, then read and parse every file once."""
    bare = _Bare(env)
    roles = resolve_roles(certs)
    detail: dict = {"role_reads_s": {}}
    for threads in thread_counts:
        detail["role_reads_s"][threads] = round(_timed_map(
            threads, lambda r: bare.call("GET", f"{r.mount}/roles/{r.name}"), roles), 2)
    started = time.monotonic()
    files = _read_and_parse(out)
    detail["files_s"] = round(time.monotonic() - started, 2)
    detail["files"] = files
    best = min(detail["role_reads_s"].values())
    return {"noop_floor_s": round(best + detail["files_s"], 2), "detail": detail}


def _read_and_parse(out: Path) -> int:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    count = 0
    for node in sorted(p for p in out.iterdir() if p.is_dir()):
        for path in sorted(node.rglob("*")):
            if path.name.startswith("..") or any(p.startswith("..") for p in path.relative_to(node).parts):
                continue
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.suffix == ".crt":
                x509.load_pem_x509_certificates(data)
            elif path.suffix == ".key":
                serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)
            elif path.suffix == ".conf":
                yaml.load(data, Loader=loader)
            count += 1
    return count


def run_write_floor(out: Path, copy: Path) -> dict:
    """The tree bootstrap wrote, made again by one thread in the plainest way: each directory,
    file (same bytes and mode, then an fsync: vaultk8s's files are durable too) and symlink,
    no temp files, no renames, no locks. Content is read before the clock starts."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(out):
        rel = Path(dirpath).relative_to(out)
        entries.append(("dir", rel, None))
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            if path.is_symlink():
                entries.append(("link", rel / name, os.readlink(path)))
            elif path.is_file():
                entries.append(("file", rel / name, (path.read_bytes(), path.stat().st_mode & 0o777)))
    started = time.monotonic()
    for kind, rel, value in entries:
        target = copy / rel
        if kind == "dir":
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
        elif kind == "link":
            os.symlink(value, target)
        else:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, value[1])
            try:
                os.write(fd, value[0])
                os.fsync(fd)
            finally:
                os.close(fd)
    counts = {k: sum(e[0] == k for e in entries) for k in ("dir", "file", "link")}
    return {"write_floor_s": round(time.monotonic() - started, 2), "detail": counts}


# --- the whole machine --------------------------------------------------------------------------

def machine_cpu_s() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine so far, from /proc/stat: busy is every
    process's user + system + interrupt time, stolen what the hypervisor gave other guests."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def machine_use(started: tuple[float, float], seconds: float) -> dict:
    """How many cores the whole machine kept busy over a window (2.0: both, on 2 cores)."""
    busy, stolen = (now - then for now, then in zip(machine_cpu_s(), started))
    return {"machine_busy_cores": round(busy / seconds, 2), "machine_stolen_s": round(stolen, 2)}


# --- vaultk8s -----------------------------------------------------------------------------------

def run_bootstrap(env, cluster_file: Path, out: Path, concurrency: int | None, profile: Path | None) -> dict:
    cmd = [sys.executable, "-m", "vaultk8s", "bootstrap", "--config", str(cluster_file), "--out", str(out),
           "--output", "json"]
    if concurrency:
        cmd += ["--workers", str(concurrency)]
    if profile:
        pyspy = shutil.which("py-spy")
        if not pyspy:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        cmd = [pyspy, "record", "--format", "raw", "--rate", "200", "--subprocesses", "--threads", "-o", str(profile),
               "--", *cmd]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    environ.update(env.as_environ(), PYTHONPATH=str(REPO))
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started, machine_started = time.monotonic(), machine_cpu_s()
        proc = subprocess.Popen(cmd, env=environ, cwd=REPO, stdout=stdout, stderr=stderr)  # -m puts the cwd first
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's own peak RSS
        seconds = time.monotonic() - started
        machine = machine_use(machine_started, seconds)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read().decode(), stderr.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"bootstrap exited {proc.returncode}: {errors[-2000:]}")
    report, _ = json.JSONDecoder().raw_decode(text[text.index("{"):])  # py-spy (--profile) prints around it
    return {"seconds": round(seconds, 2), "report": report, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),  # its own threads and any key processes it reaped
            "user_s": round(usage.ru_utime, 2), "system_s": round(usage.ru_stime, 2), **machine}


# --- cfssl --------------------------------------------------------------------------------------

def run_cfssl(certs, work: Path) -> dict:
    cfssl = shutil.which("cfssl")
    if not cfssl:
        return {"cfssl_s": None, "cfssl_skipped": "cfssl not installed (Debian package golang-cfssl)"}
    work.mkdir()
    key = _cfssl_key(certs[0].key_type)
    for ca in catalog.CAS:
        csr = work / f"{ca.name}-csr.json"
        csr.write_text(json.dumps({"CN": ca.common_name, "key": key}))
        body = json.loads(subprocess.run([cfssl, "gencert", "-initca", str(csr)], capture_output=True, check=True,
                                         timeout=120).stdout)
        (work / f"{ca.name}.pem").write_text(body["cert"])
        (work / f"{ca.name}-key.pem").write_text(body["key"])
        os.chmod(work / f"{ca.name}-key.pem", 0o600)
    config = work / "config.json"
    profiles = {u: {"expiry": "24h", "usages": ["digital signature", "key encipherment", *extra]}
                for u, extra in (("server", ["server auth"]), ("client", ["client auth"]),
                                 ("peer", ["server auth", "client auth"]))}
    config.write_text(json.dumps({"signing": {"profiles": profiles}}))
    jobs = []
    for i, rc in enumerate(certs):
        csr = work / f"{i}-csr.json"
        names = [{"O": rc.organization}] if rc.organization else []
        csr.write_text(json.dumps({"CN": rc.common_name, "hosts": [*rc.dns_sans, *map(str, rc.ip_sans)],
                                   "key": key, "names": names}))
        jobs.append((rc, csr, work / rc.node))
    started = time.monotonic()
    for rc, csr, node_dir in jobs:
        node_dir.mkdir(exist_ok=True)
        body = json.loads(_gencert(cfssl, work, config, rc, csr))
        (node_dir / rc.cert_file.replace("/", "_")).write_text(body["cert"])
        key_path = node_dir / rc.key_file.replace("/", "_")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body["key"])
    return {"cfssl_s": round(time.monotonic() - started, 2)}


def _gencert(cfssl: str, work: Path, config: Path, rc, csr: Path) -> bytes:
    return subprocess.run(
        [cfssl, "gencert", "-loglevel", "5", "-ca", str(work / f"{rc.spec.ca}.pem"),
         "-ca-key", str(work / f"{rc.spec.ca}-key.pem"), "-config", str(config), "-profile", _profile(rc),
         str(csr)], capture_output=True, check=True, timeout=60).stdout


def _profile(rc) -> str:
    usages = rc.usages
    if catalog.Usage.SERVER in usages and catalog.Usage.CLIENT in usages:
        return "peer"
    return "server" if catalog.Usage.SERVER in usages else "client"


def _cfssl_key(key_type: str) -> dict:
    algo, size = key_type.split("-")
    return {"algo": "ecdsa" if algo == "ec" else "rsa", "size": {"p256": 256, "p384": 384}.get(size) or int(size)}


if __name__ == "__main__":
    main()
