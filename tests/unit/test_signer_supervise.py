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


class Keeper:
    """Stands in for VaultSigner.keep_logged_in: counts logins, or raises a bug on the first."""

    def __init__(self, raises=False, takes=0.0):
        self.raises, self.takes, self.logins = raises, takes, 0
        self.second_login = threading.Event()

    def keep_logged_in(self) -> float:
        if self.raises:
            raise KeyError("a bug in the login keeper")
        if self.logins == 1:
            self.second_login.set()
        threading.Event().wait(self.takes)  # a login on its way to Vault
        self.logins += 1
        return 0.05


def _run_with_keeper(keeper, stop_when=None):
    store = LeaseStore()
    elector = LeaseElector(store, "kube-system", "vaultk8s-signer", "a")
    stop = threading.Event()
    if stop_when is not None:
        threading.Thread(target=lambda: stop_when.wait(10) and stop.set(), daemon=True).start()
    ended = run_until_stopped(WaitingSigner(elector), elector, stop, poll=0.02, lease_period=0.02,
                              keep_logged_in=keeper)
    return ended, store


def test_an_approle_signers_login_keeper_is_supervised_like_the_other_loops(caplog):
    with caplog.at_level(logging.ERROR, logger="vaultk8s.signer"):
        ended, store = _run_with_keeper(Keeper(raises=True))
    assert ended == "login" and store.lease["spec"]["holderIdentity"] == ""
    assert "a bug in the login keeper" in caplog.records[0].exc_text
    keeper = Keeper(takes=0.4)
    ended, _ = _run_with_keeper(keeper, stop_when=keeper.second_login)  # stopped during its second login
    assert ended is None
    assert keeper.logins == 2  # joined before returning: no login ends after the caller revokes its token
    assert not [t for t in threading.enumerate() if t.name == "login"]
