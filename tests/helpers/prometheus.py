"""A real Prometheus (Debian `prometheus` 2.42) for tests: its own config and data folder, listening on
127.0.0.1 only, scraping the given targets and evaluating the given rule files at a short interval;
and `promtool` (check rules, test rules). Stopped by pid with bounded waits.

A test that needs it skips with a reason when prometheus or promtool is not installed
(scripts/setup.sh installs them).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.helpers.kube import stop_process
from tests.helpers.ports import find_free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (Debian prometheus; scripts/setup.sh)")
    return path


def promtool(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """`promtool ARGS` (e.g. `check rules F`, `test rules T`); returns the finished process, unchecked."""
    return subprocess.run([_binary("promtool"), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def _loopback_port() -> int:
    return find_free_port(1)


class Prometheus:
    """`Prometheus(workdir, {"job": ["127.0.0.1:9469"]}, [rules.yml]).start()`; then query / alerts."""

    def __init__(self, workdir: Path, scrape_targets: dict[str, list[str]], rule_files: list[Path] = (),
                 interval: str = "1s") -> None:
        self.binary = _binary("prometheus")
        _binary("promtool")
        self.workdir, self.interval = workdir, interval
        self.scrape_targets = {job: list(targets) for job, targets in scrape_targets.items()}
        self.rule_files = [Path(f).resolve() for f in rule_files]
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.data = workdir / "prometheus-data"
        self.log = workdir / "prometheus.log"
        self.port = _loopback_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_doc(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.interval, "scrape_timeout": self.interval,
                       "evaluation_interval": self.interval},
            "rule_files": [str(f) for f in self.rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": targets}]}
                               for job, targets in self.scrape_targets.items()],
        }

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write the config, check it with promtool, start Prometheus; returns once /-/ready is 200."""
        self.config.write_text(yaml.safe_dump(self.config_doc(), sort_keys=False))
        checked = promtool("check", "config", str(self.config))
        assert checked.returncode == 0, f"promtool check config: {checked.stdout}{checked.stderr}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([
                self.binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=info",
            ], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"prometheus not ready within {timeout}s: {self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop_process(self.proc, timeout)

    def __enter__(self) -> "Prometheus":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    # HTTP API ----------------------------------------------------------------------------------
    def _api(self, path: str, **params: str) -> Any:
        resp = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {resp.status_code} {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query: the result list ({"metric": {...}, "value": [ts, "v"]} per series)."""
        return self._api("query", query=expr)["result"]

    def alerts(self) -> dict[str, str]:
        """alertname -> state ("pending" or "firing"; "firing" when any series of that name fires)."""
        states: dict[str, str] = {}
        for alert in self._api("alerts")["alerts"]:
            name = alert["labels"]["alertname"]
            if states.get(name) != "firing":
                states[name] = alert["state"]
        return states

    def rules(self) -> list[dict[str, Any]]:
        """Every rule with its health and last error (/api/v1/rules), flattened over groups."""
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def wait_for_alert(self, name: str, state: str = "firing", timeout: float = 60) -> float:
        """Poll (bounded) until alert `name` is in `state`; returns the seconds it took."""
        start = time.monotonic()
        deadline, seen = start + timeout, {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}: {self.log_tail()}")
            seen = self.alerts()
            if seen.get(name) == state:
                return time.monotonic() - start
            time.sleep(0.25)
        broken = [(r["name"], r.get("lastError")) for r in self.rules() if r.get("health") == "err"]
        raise AssertionError(f"alert {name} not {state} within {timeout}s: alerts {seen}, rule errors {broken}, "
                             f"targets {self.targets_up()}")

    def targets_up(self) -> dict[str, bool]:
        """"job/instance" -> whether its last scrape succeeded (False before the first one)."""
        return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] == "up"
                for t in self._api("targets", state="active")["activeTargets"]}

    def wait_targets_up(self, timeout: float = 30) -> dict[str, bool]:
        deadline, up = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            up = self.targets_up()
            if up and all(up.values()):
                return up
            time.sleep(0.25)
        raise AssertionError(f"targets not all up within {timeout}s: {up}")
