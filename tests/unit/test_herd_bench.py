"""bench/herd.py on a small fleet: the report has its keys, and a fresh fleet's renewals are spread."""

import importlib.util
from pathlib import Path

from tests.helpers.cluster import REPO


def _herd():
    spec = importlib.util.spec_from_file_location("herd", Path(REPO) / "bench" / "herd.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_herd_reports_every_series_and_is_deterministic():
    herd = _herd()
    reports = [herd.simulate(scenario, agents=500, days=1, seed=1) for scenario in ("restart", "outage")]
    for report in reports:
        for series in herd.SERIES:
            for key in ("total", "mean_per_min", "peak_per_min", "peak_over_mean", "peak_minute"):
                assert f"{series}_{key}" in report
    restart = reports[0]
    assert restart["signs_total"] > 0 and restart["attempts_total"] == restart["successes_total"]
    outage = reports[1]
    assert outage["attempts_total"] > outage["successes_total"]  # rounds failed during the outage
    again = herd.simulate("restart", agents=500, days=1, seed=1)
    assert {k: v for k, v in again.items() if k != "sim_seconds"} == {k: v for k, v in restart.items()
                                                                      if k != "sim_seconds"}
