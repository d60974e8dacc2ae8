"""Benchmark: the renewal herd of a fleet of agents, simulated (no servers), with the agent's real schedule.

    python3 bench/herd.py [--agents 10000] [--days 3] [--seed 1] [--scenario restart outage]

Each simulated agent does what vaultk8s/agent/runner.py and ops/renew.py do, with the same pure
functions from vaultk8s/plan/schedule.py: a per-agent seed drawn from its own random source, each
certificate's renewal time from `renew_at` seeded by serial ^ seed (and the agent's start time), the
next wake from `next_wake` (idle 1 h), `retry_delay` after a failed round (given the time to the
earliest expiry). Renewal
issues a new 24 h certificate (Vault's not_before is 30 s in the past) with a new random serial.
Each agent holds a worker's certificates (kubelet-client, kubelet-serving, kube-proxy).

Scenarios:
  restart  all agents start at t=0 with every certificate issued at t=0 (the bootstrap case).
  outage   a fleet in steady state (certificate ages spread over their renewal period), Vault down
           from 12 h to 14 h: every round fails then, agents back off; then recovery.

Per minute it counts rounds (every wake: a login), attempts (rounds with a certificate due),
successes (attempts that reached a working Vault) and signs (certificates issued), and reports
peak per-minute over mean per-minute for each. Deterministic for a given seed. Prints one JSON
line per scenario. Results are in bench/README.md.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vaultk8s import catalog  # noqa: E402
from vaultk8s.ops.renew import agent_renews  # noqa: E402
from vaultk8s.plan import schedule  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
TTL = timedelta(hours=24)
BACKDATE = timedelta(seconds=30)  # OpenBao's default not_before_duration
IDLE = timedelta(hours=1)  # the agent's default --idle
OUTAGE = (timedelta(hours=12), timedelta(hours=14))
SERIES = ("rounds", "attempts", "successes", "signs")


def worker_certs() -> int:
    return sum(1 for spec in catalog.certs_for(control_plane=False) if agent_renews(spec))


class Cert:
    __slots__ = ("serial", "not_before", "not_after", "due")

    def __init__(self, serial: int, not_before: datetime, seed: int, started: datetime):
        self.serial, self.not_before, self.not_after = serial, not_before, not_before + BACKDATE + TTL
        self.due = schedule.renew_at(self.not_before, self.not_after, random.Random(serial ^ seed), started)


class SimAgent:
    """One agent: its own random source and seed as Agent.__post_init__ draws them."""

    def __init__(self, rng: random.Random, started: datetime):
        self.rng = rng
        self.seed = rng.getrandbits(32)
        self.started = started
        self.failures = 0
        self.certs: list[Cert] = []

    def issue(self, serial: int, now: datetime) -> Cert:
        return Cert(serial, now - BACKDATE, self.seed, self.started)


def simulate(scenario: str, agents: int, days: float, seed: int) -> dict:
    started_wall = time.monotonic()
    counts = per_minute(scenario, agents, days, seed)
    minutes = int(days * 1440)
    report = {"scenario": scenario, "agents": agents, "days": days, "seed": seed,
              "certs_per_agent": worker_certs()}
    for name in SERIES:
        series = counts[name]
        mean = sum(series) / minutes
        report[f"{name}_total"] = sum(series)
        report[f"{name}_mean_per_min"] = round(mean, 2)
        report[f"{name}_peak_per_min"] = max(series)
        report[f"{name}_peak_over_mean"] = round(max(series) / mean, 2) if mean else None
        report[f"{name}_peak_minute"] = series.index(max(series))
    report["sim_seconds"] = round(time.monotonic() - started_wall, 1)
    return report


def per_minute(scenario: str, agents: int, days: float, seed: int) -> dict[str, list[int]]:
    master = random.Random(f"{scenario}/{seed}")
    minutes = int(days * 1440)
    counts = {name: [0] * minutes for name in SERIES}
    end = T0 + timedelta(days=days)
    outage = (T0 + OUTAGE[0], T0 + OUTAGE[1]) if scenario == "outage" else None
    fleet, queue = _fleet(scenario, agents, master)
    while queue:
        when, index = heapq.heappop(queue)
        if when >= end:
            break
        agent = fleet[index]
        minute = int((when - T0).total_seconds() // 60)
        if agent.failures:  # as the runner does: a round after failures restarts the schedule
            agent.started = when
            agent.certs = [Cert(c.serial, c.not_before, agent.seed, when) for c in agent.certs]
        due = [c for c in agent.certs if when >= c.due]
        counts["rounds"][minute] += 1
        counts["attempts"][minute] += bool(due)
        if outage and outage[0] <= when < outage[1]:
            agent.failures += 1
            until_expiry = min(c.not_after for c in agent.certs) - when
            delay = schedule.retry_delay(agent.failures, agent.rng, until_expiry)
        else:
            agent.failures = 0
            counts["successes"][minute] += bool(due)
            counts["signs"][minute] += len(due)
            for cert in due:
                agent.certs[agent.certs.index(cert)] = agent.issue(master.getrandbits(64), when)
            delay = schedule.next_wake([c.due for c in agent.certs], when, IDLE) - when
        heapq.heappush(queue, (when + delay, index))
    return counts


def _fleet(scenario: str, agents: int, master: random.Random) -> tuple[list[SimAgent], list]:
    fleet, queue = [], []
    for index in range(agents):
        if scenario == "restart":
            agent = SimAgent(random.Random(master.getrandbits(64)), started=T0)
            agent.certs = [agent.issue(master.getrandbits(64), T0) for _ in range(worker_certs())]
            first = T0  # every agent's first round is at start
        else:
            agent = SimAgent(random.Random(master.getrandbits(64)), started=T0 - timedelta(days=30))  # long-running
            agent.certs = [_steady_cert(agent, master) for _ in range(worker_certs())]
            first = min([T0 + IDLE * master.random()] + [c.due for c in agent.certs])
        fleet.append(agent)
        queue.append((first, index))
    heapq.heapify(queue)
    return fleet, queue


def _steady_cert(agent: SimAgent, master: random.Random) -> Cert:
    """A certificate somewhere in its renewal period: its age uniform over [0, its due time)."""
    serial = master.getrandbits(64)
    probe = Cert(serial, T0, agent.seed, agent.started)
    age = (probe.due - T0) * master.random()
    return Cert(serial, T0 - age, agent.seed, agent.started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenario", nargs="+", choices=("restart", "outage"), default=["restart", "outage"])
    args = parser.parse_args()
    for scenario in args.scenario:
        print(json.dumps(simulate(scenario, args.agents, args.days, args.seed)), flush=True)


if __name__ == "__main__":
    main()
