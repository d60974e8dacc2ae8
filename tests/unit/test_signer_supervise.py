"""`vaultk8s signer` exits when either of its loops ends by itself, and releases the lease on the way.

Before, only the signer loop was watched: a lease loop that raised left the process up, never leader
again, with a green /healthz. The Lease is the in-memory store of the leader tests (the real API
server is in tests/integration/test_signer_kube.py); the loops run in real threads on the real clock.
"""

from __future__ import annotations

import logging
import threading

from vaultk8s.signer.controller import run_until_stopped
from vaultk8s.signer.leader import LeaseElector
from vaultk8s.signer.metrics import SignerMetrics

from tests.helpers.lease import LeaseStore


class FlakyLeaseStore(LeaseStore):
    """Raises an unexpected error (not KubeError) on the first renewal, then works again."""

    def __init__(self):
        super().__init__()
        self.renewals_failed = 0

    def replace_lease(self, lease, spec):
        if self.renewals_failed == 0 and spec["holderIdentity"]:
            self.renewals_failed += 1
            raise RuntimeError("a bug in the renewal")
        super().replace_lease(lease, spec)


class WaitingSigner:
    """Stands in for Signer.run: waits for leadership until stopped, or raises once it leads."""

    def __init__(self, elector, raises=False):
        self.elector, self.raises = elector, raises
        self.metrics = SignerMetrics()
        self._stop = threading.Event()

    def run(self):
        while not self._stop.is_set():
            if self.elector.wait_for_leadership(0.05) and self.raises:
                raise ValueError("a bug in the signer loop")

    def stop(self):
        self._stop.set()
        self.elector.wake()


def _run(store, raises=False, stop_after=None):
    elector = LeaseElector(store, "kube-system", "vaultk8s-signer", "a")
    runner = WaitingSigner(elector, raises=raises)
    stop = threading.Event()
    if stop_after is not None:
        threading.Timer(stop_after, stop.set).start()
    ended = run_until_stopped(runner, elector, stop, poll=0.02, lease_period=0.02)
    return ended, runner.metrics.leader._value.get()


def test_a_lease_loop_that_raises_ends_the_signer_and_the_lease_is_released(caplog):
    store = FlakyLeaseStore()
    with caplog.at_level(logging.ERROR, logger="vaultk8s.signer"):
        ended, leader_gauge = _run(store)
    assert ended == "lease" and store.renewals_failed == 1
    assert store.lease["spec"]["holderIdentity"] == ""  # a standby takes over at once
    assert leader_gauge == 0
    [record] = caplog.records
    assert "the lease loop stopped" in record.getMessage() and "a bug in the renewal" in record.exc_text


def test_a_signer_loop_that_raises_ends_the_signer_and_the_lease_is_released(caplog):
    store = LeaseStore()
    with caplog.at_level(logging.ERROR, logger="vaultk8s.signer"):
        ended, _ = _run(store, raises=True)
    assert ended == "signer"
    assert store.lease["spec"]["holderIdentity"] == ""
    assert "a bug in the signer loop" in caplog.records[0].exc_text


def test_a_requested_stop_is_not_an_unexpected_end(caplog):
    store = LeaseStore()
    with caplog.at_level(logging.ERROR, logger="vaultk8s.signer"):
        ended, _ = _run(store, stop_after=0.3)
    assert ended is None and not caplog.records
    assert store.version >= 3  # created, renewed at least once, released
    assert store.lease["spec"]["holderIdentity"] == ""
