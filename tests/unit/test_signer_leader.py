"""Lease election logic with a fixed clock over an in-memory Lease store that enforces resourceVersion
(the real API server is in tests/integration/test_signer_kube.py: two replicas, fail-over)."""

from __future__ import annotations

import copy
import random
import threading

from vaultk8s.signer.controller import MAX_BACKOFF_SECONDS, backoff_seconds
from vaultk8s.signer.leader import LeaseElector

from tests.helpers.lease import Clock, LeaseStore


def _elector(store, clock, identity):
    return LeaseElector(store, "kube-system", "vaultk8s-signer", identity, clock=lambda: clock.now,
                        monotonic=lambda: clock.mono)


def test_one_leader_and_the_other_takes_over_only_after_the_lease_runs_out():
    store, clock = LeaseStore(), Clock()
    a, b = _elector(store, clock, "a"), _elector(store, clock, "b")
    assert a.try_acquire_or_renew() and a.is_leader()
    assert not b.try_acquire_or_renew() and not b.is_leader()
    clock.advance(5)
    assert a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    clock.advance(11)  # a stopped renewing: its own view ends at the renew deadline (10 s)...
    assert not a.is_leader()
    assert not b.try_acquire_or_renew()  # ...but the lease (15 s) still stands for the others
    clock.advance(5)
    assert b.try_acquire_or_renew() and b.is_leader()
    assert store.lease["spec"]["holderIdentity"] == "b" and store.lease["spec"]["leaseTransitions"] == 1
    assert not a.try_acquire_or_renew() and not a.is_leader()


def test_release_hands_over_at_once():
    store, clock = LeaseStore(), Clock()
    a, b = _elector(store, clock, "a"), _elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    a.release()
    assert not a.is_leader() and store.lease["spec"]["holderIdentity"] == ""
    assert b.try_acquire_or_renew()


def test_a_stale_read_loses_the_race():
    store, clock = LeaseStore(), Clock()
    a, b = _elector(store, clock, "a"), _elector(store, clock, "b")
    assert a.try_acquire_or_renew()
    clock.advance(20)  # expired: both try at once; the second write carries a stale resourceVersion
    stale = store.read_lease("kube-system", "vaultk8s-signer")
    assert b.try_acquire_or_renew()
    store.read_lease = lambda *_: copy.deepcopy(stale)
    assert not a.try_acquire_or_renew() and not a.is_leader()


def test_a_waiting_loop_wakes_when_the_lease_is_won_not_at_its_next_poll():
    store, clock = LeaseStore(), Clock()
    a, b = _elector(store, clock, "a"), _elector(store, clock, "b")
    assert not a.wait_for_leadership(0.01)  # no attempt yet: times out, not leader
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(a.wait_for_leadership(30)))
    waiter.start()
    assert a.try_acquire_or_renew()
    waiter.join(timeout=5)  # well before the 30 s it would otherwise wait
    assert woke == [True]
    assert a.wait_for_leadership(30)  # already leader: returns at once
    assert b.try_acquire_or_renew() is False and not b.wait_for_leadership(0.01)  # a lost attempt wakes no one


def test_wake_ends_a_standby_wait_without_making_it_leader():
    store, clock = LeaseStore(), Clock()
    a = _elector(store, clock, "a")
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(a.wait_for_leadership(30)))
    waiter.start()
    a.wake()
    waiter.join(timeout=5)
    assert woke == [False] and not waiter.is_alive()


def test_backoff_grows_and_is_capped():
    rng = random.Random(7)
    delays = [backoff_seconds(n, rng) for n in range(1, 12)]
    assert delays[0] <= 1.0 and all(0.25 <= d <= MAX_BACKOFF_SECONDS for d in delays)
    assert delays[-1] >= MAX_BACKOFF_SECONDS / 2
