"""CSR signer backlog: N approved kubelet-client CSRs pending on a real kube-apiserver, signed and
written back by `vaultk8s signer`, against the floor of N bare signs in the same run.

    VAULTK8S_KUBE_BIN=../shared/k8s/bin python3 bench/signer_backlog.py [--csrs 1000] [--floor-threads 8,16,32]
        [--work-dir /dev/shm/NEW]   # OpenBao's raft, etcd's data and the tree on tmpfs; kept

Order: one local OpenBao (vaultk8s.dev.DevServer) and a cluster of cp-1 + N workers bootstrapped
on it (tests/helpers/kube.py: etcd + kube-apiserver from ../shared/k8s); each worker posts one
kubelet-client CSR with its own certificate, and the super-admin approves them all (untimed). Then:
1. **signer**: `python -m vaultk8s signer` starts (token login, lease, list) and signs the backlog;
   `signer_s` runs from its spawn until every CSR has its certificate (its signed counter on
   /metrics, then one list to check); `signer_first_sign_s` until the counter first moves (its
   start: python, the kubernetes client's import, login, lease; polled every 0.1 s);
   `signer_cpu_s` is its user + system time, from `wait4`; `signer_backlog_cpu_ms_per_csr` counts
   only the CPU from the first sign to the last (from /proc), per CSR: the start left out.
2. **floor**: the same CSRs through `/sign` on the same roles by a bare `requests` client, one
   keep-alive Session per thread (compare.py's `_Bare`), best of the thread counts. Nothing is
   written back to the API server, so the floor is what Vault alone charges.
3. **write floor**: one status write per CSR (PUT .../status of the listed object, one more condition)
   by the same bare client, best of the thread counts: what the API server and etcd charge for the
   write-back the sign floor leaves out.
Prints one JSON line; `signer_over_floor` = signer_s / floor_s, `signer_over_both_floors` =
signer_s / (floor_s + kube_write_floor_s): on 2 cores Vault, etcd and the API server share the CPU.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.compare import (  # noqa: E402
    _Bare, _fs_type, _timed_map, _work_dir, machine_cpu_s, machine_use, new_work_dir, print_against_openbao)
from tests.helpers.csr import CLIENT_USAGES, make_request  # noqa: E402
from tests.helpers.kube import loopback_port, running_control_plane, stop_process  # noqa: E402
from vaultk8s.config import load_config  # noqa: E402
from vaultk8s.plan.csr_review import CLIENT_SIGNER  # noqa: E402

CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csrs", type=int, default=1000, help="pending CSRs, one per worker node")
    parser.add_argument("--floor-threads", default="8,16,32", help="thread counts the floor tries (best counts)")
    parser.add_argument("--signer-workers", type=int, help="pass --workers N to the signer (default: its own)")
    parser.add_argument("--timeout", type=float, default=900, help="give up on the signer after this long")
    parser.add_argument("--py-spy", metavar="SVG", help="run the signer under `py-spy record -o SVG` (collapsed stacks unless it ends .svg; its times then include py-spy)")
    parser.add_argument("--work-dir", type=Path, help="run in this new directory and keep it: OpenBao's raft, etcd's data "
                        "and the tree go there (default: a temp directory, removed at the end)")
    args = parser.parse_args()
    args.work_dir = new_work_dir(parser, args.work_dir)
    with _work_dir(args.work_dir) as tmp:
        print_against_openbao(tmp, lambda env: run(env, tmp, args))


def run(env, tmp: Path, args) -> dict:
    load_before = os.getloadavg()[0]
    nodes = {"control_plane": [{"name": "cp-1", "ips": ["127.0.0.1"], "sans": ["localhost"]}],
             "workers": [{"name": f"worker-{i + 1}", "ips": [f"127.2.{(i + 1) // 250}.{(i + 1) % 250 + 1}"]}
                         for i in range(args.csrs)]}
    with running_control_plane(tmp, env.as_environ(), "sb/", workers=args.csrs, nodes=nodes) as plane:
        config = load_config(plane.cluster_file)
        admin = _Client(plane.url, plane.pki / "ca.crt", plane.pki / "super-admin.crt", plane.pki / "super-admin.key")
        csrs = _post_backlog(plane, admin, args.csrs)
        signer = _run_signer(plane, env, tmp, len(csrs), args.timeout, args.signer_workers, args.py_spy)
        unsigned = [c["metadata"]["name"] for c in admin.get(CSR_API)["items"] if not (c.get("status") or {}).get("certificate")]
        if unsigned:
            raise SystemExit(f"{len(unsigned)} CSR(s) still unsigned, e.g. {unsigned[0]}")
        threads = [int(t) for t in args.floor_threads.split(",")]
        floor = _floor(env, config, csrs, threads)
        write_floor = _write_floor(plane, threads)
    return {"csrs": len(csrs), "signer_workers": args.signer_workers, **signer, **floor, **write_floor,
            "signer_over_floor": round(signer["signer_s"] / floor["floor_s"], 2),
            "signer_over_both_floors": round(signer["signer_s"] / (floor["floor_s"] + write_floor["kube_write_floor_s"]), 2),
            "tmpfs": _fs_type(tmp) == "tmpfs", "work_dir_fs": _fs_type(tmp),
            "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


class _Client:
    """The API server over requests with a client certificate (no kubectl process per call)."""

    def __init__(self, url: str, ca: Path, cert: Path, key: Path):
        self.url, self.session, self.ca = url, requests.Session(), str(ca)
        self.session.cert = (str(cert), str(key))

    def get(self, path: str) -> dict:
        return self.send("GET", path, None)

    def send(self, method: str, path: str, body: dict | None) -> dict:
        # verify per request: a session-level verify loses to REQUESTS_CA_BUNDLE in requests
        return self._checked(self.session.request(method, self.url + path, json=body, timeout=60, verify=self.ca))

    @staticmethod
    def _checked(resp: requests.Response) -> dict:
        if resp.status_code >= 400:
            raise SystemExit(f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:300]}")
        return resp.json()


def _post_backlog(plane, admin: _Client, count: int) -> list[tuple[str, str]]:
    """Each worker posts its kubelet-client CSR as itself; the super-admin approves. [(node, CSR PEM)]."""
    def post(i: int) -> tuple[str, str]:
        node = f"worker-{i + 1}"
        pki = plane.out / node / "pki"
        client = _Client(plane.url, pki / "ca.crt", pki / "kubelet-client.crt", pki / "kubelet-client.key")
        pem = make_request(f"system:node:{node}")[1]
        name = f"backlog-{node}"
        client.send("POST", CSR_API, {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                                      "metadata": {"name": name},
                                      "spec": {"request": base64.b64encode(pem.encode()).decode(),
                                               "signerName": CLIENT_SIGNER, "usages": CLIENT_USAGES}})
        csr = admin.get(f"{CSR_API}/{name}")
        csr.setdefault("status", {})["conditions"] = [{"type": "Approved", "status": "True", "reason": "Bench",
                                                       "message": "approved by bench/signer_backlog.py"}]
        admin.send("PUT", f"{CSR_API}/{name}/approval", csr)
        return node, pem

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(post, range(count)))


def _run_signer(plane, env, tmp: Path, count: int, timeout: float, workers: int | None, py_spy: str | None = None) -> dict:
    token_file = tmp / "signer-token"
    token_file.touch(mode=0o600)  # 0600 before the token is in it
    token_file.write_text(env.token)
    port = loopback_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    child_env = {**base, **env.as_environ(), "PYTHONPATH": str(REPO)}
    child_env.pop("VAULT_TOKEN", None)
    log = open(tmp / "signer.log", "wb")
    started, machine_started = time.monotonic(), machine_cpu_s()
    profiler = ["py-spy", "record", "--rate", "200", "--format", "flamegraph" if py_spy.endswith(".svg") else "raw",
                "-o", str(Path(py_spy).resolve()), "--"] if py_spy else []
    proc = subprocess.Popen(profiler + [sys.executable, "-m", "vaultk8s", "signer", "--config", str(plane.cluster_file),
                             "--kubeconfig", str(plane.super_admin_kubeconfig), "--token-file", str(token_file),
                             "--metrics-addr", f"127.0.0.1:{port}"] + (["--workers", str(workers)] if workers else []),
                            env=child_env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # -m: cwd first
    first_sign_s = cpu_at_first_sign = None
    try:
        while (signed := _signed(port)) < count:
            if proc.poll() is not None or time.monotonic() - started > timeout:
                raise SystemExit(f"the signer stopped or timed out; see {tmp / 'signer.log'}")
            if signed and first_sign_s is None:
                first_sign_s, cpu_at_first_sign = time.monotonic() - started, _process_cpu_s(proc.pid, py_spy)
            time.sleep(0.1)
        signer_s = time.monotonic() - started
        backlog_cpu_s = _process_cpu_s(proc.pid, py_spy) - (cpu_at_first_sign or 0.0)
        machine = machine_use(machine_started, signer_s)  # the signer, Vault, the API server and etcd
    finally:
        for pid in _children(proc.pid) if py_spy else [proc.pid]:  # py-spy writes its file once the signer exits
            os.kill(pid, signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop_process(proc)
        log.close()
    return {"signer_s": round(signer_s, 2), "signer_first_sign_s": round(first_sign_s or signer_s, 2),
            "signer_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "signer_sys_s": round(usage.ru_stime, 2), "signer_cpu_ms_per_csr": round(1000 * (usage.ru_utime + usage.ru_stime) / count, 2),
            "signer_backlog_cpu_ms_per_csr": round(1000 * backlog_cpu_s / count, 2),
            "signer_peak_rss_mb": round(usage.ru_maxrss / 1024, 1), **machine}


def _process_cpu_s(pid: int, py_spy: str | None) -> float:
    """User + system CPU the signer has used so far (under py-spy: its child, the signer)."""
    target = _children(pid)[0] if py_spy else pid
    fields = Path(f"/proc/{target}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _signed(port: int) -> float:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.ConnectionError:
        return 0.0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vaultk8s_signer_signed_total"))


def _floor(env, config, csrs: list[tuple[str, str]], thread_counts: list[int]) -> dict:
    bare = _Bare(env)
    mount, ttl = config.mount("kubernetes-ca"), f"{int(config.leaf_ttl.total_seconds())}s"

    def sign(item):
        node, pem = item
        bare.call("POST", f"{mount}/sign/kubelet-client-{node}", {"csr": pem, "ttl": ttl, "format": "pem"})

    times = {threads: round(_timed_map(threads, sign, csrs), 2) for threads in thread_counts}
    return {"floor_s": min(times.values()), "floor_by_threads_s": times}


def _write_floor(plane, thread_counts: list[int]) -> dict:
    """One status write per CSR, as the signer makes it (PUT .../status with the listed object), by a
    bare client: what the API server and etcd alone charge for writing the certificates back."""
    local = threading.local()
    pki = plane.pki

    def write(csr: dict, kind: str) -> None:
        if not hasattr(local, "client"):
            local.client = _Client(plane.url, pki / "ca.crt", pki / "super-admin.crt", pki / "super-admin.key")
        name, status = csr["metadata"]["name"], csr.setdefault("status", {})
        status["conditions"] = [*status.get("conditions", []),
                                {"type": kind, "status": "True", "reason": "Bench", "message": "write floor"}]
        local.client.send("PUT", f"{CSR_API}/{name}/status", csr)

    admin = _Client(plane.url, pki / "ca.crt", pki / "super-admin.crt", pki / "super-admin.key")
    times = {}
    for threads in thread_counts:  # each round writes every CSR once more, from a fresh list
        kind = f"BenchWrite{threads}"  # a condition type appears once per CSR
        times[threads] = round(_timed_map(threads, lambda csr: write(csr, kind), admin.get(CSR_API)["items"]), 2)
    return {"kube_write_floor_s": min(times.values()), "kube_write_floor_by_threads_s": times}


if __name__ == "__main__":
    main()
