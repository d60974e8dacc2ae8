"""Benchmark: what the renewal agent costs while it sleeps, and how long one control-plane renewal takes.

    python3 bench/agent_idle.py [--idle-seconds 300] [--node cp-1] [--renewals 3]

A fresh local OpenBao (raft + TLS), a tiny cluster (cp-1 + worker-1) bootstrapped with policies
applied, the node's AppRole credential from `vaultk8s node credentials`, then `vaultk8s agent` as a
long-lived process. After its first good round (seen on /metrics) it is left alone for the idle
window: CPU time is utime+stime from /proc/<pid>/stat before and after, memory is VmRSS/VmHWM from
/proc/<pid>/status. Then `vaultk8s agent --once --force` on cp-1 is timed (wall clock, process
start included). Prints one JSON line. Results are in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.ports import find_free_port  # noqa: E402
from tests.helpers.agent import start_agent, stop_agent, wait_for  # noqa: E402
from tests.helpers.cluster import cluster_doc, run_cli, write_cluster  # noqa: E402
from vaultk8s.dev import DevServer  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--node", default="cp-1", help="the node whose agent is watched while idle")
    parser.add_argument("--renewals", type=int, default=3, help="timed `agent --once --force` runs on cp-1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(Path(tmp) / "bao", port=find_free_port(), start_timeout=60, stop_timeout=15)
        env = server.up().as_environ()
        try:
            print(json.dumps(measure(env, Path(tmp), args)), flush=True)
        finally:
            server.down()


def measure(vault_env: dict[str, str], tmp: Path, args: argparse.Namespace) -> dict:
    doc = cluster_doc("idle/", workers=1) | {"policy": {"bind_cidrs": False}}  # logins come from 127.0.0.1
    path = write_cluster(tmp / "cluster.yaml", doc)
    out = tmp / "out"
    run_cli("policy", "apply", "-c", str(path), env=vault_env, check=True)
    run_cli("bootstrap", "-c", str(path), "-o", str(out), env=vault_env, check=True)
    for node in {args.node, "cp-1"}:
        run_cli("node", "credentials", "-c", str(path), "--node", node, "--out", str(tmp / f"creds-{node}"),
                env=vault_env, check=True)
    agent_env = {k: v for k, v in vault_env.items() if k != "VAULT_TOKEN"}  # the node's own identity only
    result = {"node": args.node, "idle_seconds": args.idle_seconds}
    result.update(idle_cost(agent_env, path, out, tmp, args))
    result.update(renewal_time(agent_env, path, out, tmp, args.renewals))
    return result


def idle_cost(env: dict[str, str], path: Path, out: Path, tmp: Path, args: argparse.Namespace) -> dict:
    port = find_free_port()
    proc = start_agent(env, "-c", str(path), "--node", args.node, "--out", str(out), "--credentials",
                       str(tmp / f"creds-{args.node}"), "--metrics-port", str(port), log=tmp / "agent.log")
    try:
        wait_for("the agent's first good round", lambda: _first_round_done(port, args.node), timeout=60)
        start_cpu, start = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu = _cpu_seconds(proc.pid) - start_cpu
        window = time.monotonic() - start
        memory = _memory_mb(proc.pid)
    finally:
        code = stop_agent(proc)
    return {"idle_cpu_s": round(cpu, 3), "idle_cpu_percent": round(100 * cpu / window, 4),
            "rss_mb": memory["VmRSS"], "hwm_mb": memory["VmHWM"], "agent_exit": code}


def renewal_time(env: dict[str, str], path: Path, out: Path, tmp: Path, runs: int) -> dict:
    seconds, summary = [], ""
    for _ in range(runs):
        started = time.monotonic()
        proc = run_cli("agent", "-c", str(path), "--node", "cp-1", "--out", str(out), "--credentials",
                       str(tmp / "creds-cp-1"), "--once", "--force", env=env, check=True, timeout=120)
        seconds.append(time.monotonic() - started)
        summary = proc.stdout.strip()
    return {"cp_renew_all_s": [round(s, 2) for s in seconds],
            "cp_renew_all_median_s": round(statistics.median(seconds), 2), "cp_renew_summary": summary}


def _first_round_done(port: int, node: str) -> bool:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return f'vaultk8s_agent_rounds_total{{node="{node}",result="success"}} 1.0' in text


def _cpu_seconds(pid: int) -> float:
    # Fields after the parenthesised command name: utime and stime are the 14th and 15th overall.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 1)  # kB
    return values


if __name__ == "__main__":
    main()
