"""Leader election on a coordination.k8s.io Lease, as client-go's leaderelection does it.

Not `kubernetes.leaderelection`: it cannot be stopped, exits the process on bad settings and reads
the global client configuration. Here: one try per call (the caller's loop decides the pace), the
clock injected, every write guarded by the Lease's resourceVersion, and a release on shutdown.
A leader counts itself as leader only until `renew_deadline` after its last successful renewal,
which is shorter than the lease the others wait out, so two never act at once on a shared clock.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from vaultk8s.errors import KubeError
from vaultk8s.signer.kube import KubeGateway

log = logging.getLogger("vaultk8s.signer")


def _stamp(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class LeaseElector:
    kube: KubeGateway
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    renew_deadline_seconds: int = 10
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    monotonic: Callable[[], float] = time.monotonic
    term: int = field(default=0, init=False)  # times this replica became leader: unchanged = unbroken leadership
    _leading_until: float = field(default=0.0, repr=False)
    _gained: threading.Event = field(default_factory=threading.Event, repr=False)

    def is_leader(self) -> bool:
        return self.monotonic() < self._leading_until

    def wait_for_leadership(self, timeout: float) -> bool:
        """Up to timeout for this replica to become leader (at once when it already is): the loop
        starts the moment the lease is won, not at its next poll (which cost every start 1 s)."""
        if not self.is_leader():
            self._gained.wait(timeout)
            self._gained.clear()
        return self.is_leader()

    def wake(self) -> None:
        """End a wait_for_leadership now (shutdown: a standby's loop stops at once, not after its wait)."""
        self._gained.set()

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True when this identity holds the lease now."""
        started = self.monotonic()
        try:
            held = self._attempt()
        except KubeError as err:  # unreachable, or another candidate wrote first: leading runs out by itself
            log.info("lease %s/%s: %s", self.namespace, self.name, err)
            return False
        gained = held and not self.is_leader()
        if gained:
            self.term += 1
            log.info("became leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
        self._leading_until = started + self.renew_deadline_seconds if held else 0.0
        if gained:
            self._gained.set()  # after _leading_until: a waiter that wakes sees itself leader
        return held

    def _attempt(self) -> bool:
        now = self.clock()
        lease = self.kube.read_lease(self.namespace, self.name)
        if lease is None:
            self.kube.create_lease(self.namespace, self.name, self._spec(now, now, 0))
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
        duration = timedelta(seconds=int(spec.get("leaseDurationSeconds") or self.lease_seconds))
        if holder and holder != self.identity and renewed is not None and renewed + duration > now:
            return False  # someone else holds a live lease
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            acquired = _parse(spec.get("acquireTime")) or now
        else:
            acquired, transitions = now, transitions + 1
        self.kube.replace_lease(lease, self._spec(acquired, now, transitions))
        return True

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> dict:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "acquireTime": _stamp(acquired), "renewTime": _stamp(renewed), "leaseTransitions": transitions}

    def release(self) -> None:
        """Give the lease up on shutdown so a standby takes over at once, not after lease_seconds."""
        if not self.is_leader():
            return
        self._leading_until = 0.0
        try:
            lease = self.kube.read_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
                self.kube.replace_lease(lease, spec)
        except KubeError as err:
            log.warning("could not release the lease: %s", err)
