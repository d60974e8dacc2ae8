"""The CSR signer: list + watch CertificateSigningRequests, decide each with plan.csr_review, act.

Only the lease holder writes (leader.py). Before acting on a CSR it re-reads it and decides again
on the fresh object, and every write carries that object's resourceVersion: a CSR another replica
or a human changed meanwhile is left for the next event instead of being signed twice. Transient
failures (Vault down or sealed, an expired token, the API server unreachable) are retried with
backoff and a full re-list; they never become a Failed condition. Only a refusal does.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from vaultk8s.config import ClusterConfig
from vaultk8s.errors import KubeConflict, KubeError, VaultError, VaultK8sError, VaultRequestRefused
from vaultk8s.ops.node import authenticate
from vaultk8s.plan.csr_review import Decision, Verdict, review_csr, status_certificate
from vaultk8s.signer.kube import KubeGateway, Obj, view_of
from vaultk8s.signer.leader import LeaseElector
from vaultk8s.signer.metrics import Heartbeat, SignerMetrics
from vaultk8s.vault.gateway import VaultGateway

log = logging.getLogger("vaultk8s.signer")

MAX_BACKOFF_SECONDS = 60.0


class Transient(Exception):
    """A failure worth retrying: nothing was written to the CSR."""


@dataclass(frozen=True)
class SignerSettings:
    config: ClusterConfig
    approve_serving: bool = False
    credentials_dir: Path | None = None  # role_id / secret_id from `vaultk8s signer-credentials`
    token_file: Path | None = None
    resync_seconds: int = 300
    watch_seconds: int = 30  # a watch ends this often, so shutdown and lost leadership are noticed
    relogin_seconds: int = 600  # AppRole tokens are short-lived: log in again well before they expire


def backoff_seconds(failures: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: 0.5s, 1s, 2s ... capped at a minute."""
    ceiling = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(failures, 10))
    return ceiling / 2 + ceiling / 2 * rng.random()


class VaultSigner:
    """Signs with a node's role. Logs in lazily; any failure drops the session so the retry logs in again."""

    def __init__(self, connect: Callable[[], VaultGateway], settings: SignerSettings,
                 monotonic: Callable[[], float] = time.monotonic):
        self.connect, self.settings, self.monotonic = connect, settings, monotonic
        self._gateway: VaultGateway | None = None
        self._owned = False
        self._since = 0.0

    def sign(self, mount: str, role: str, csr_pem: str, ttl_seconds: int) -> bytes:
        gateway = self._session()
        try:
            data = gateway.sign(mount, role, csr_pem, ttl_seconds)
        except VaultRequestRefused:
            raise
        except VaultError:
            self._gateway = None
            raise
        chain = list(data.get("ca_chain") or []) or [data.get("issuing_ca") or ""]
        return status_certificate(data["certificate"], [c for c in chain if c])

    def _session(self) -> VaultGateway:
        if self._gateway is not None and self._owned and self.monotonic() - self._since > self.settings.relogin_seconds:
            self.close()
        if self._gateway is None:
            gateway = self.connect()
            self._owned = authenticate(gateway, self.settings.credentials_dir, self.settings.token_file)
            gateway.check_ready()
            self._gateway, self._since = gateway, self.monotonic()
        return self._gateway

    def close(self) -> None:
        """Revoke a token this process logged in for; the next sign logs in again."""
        gateway, self._gateway = self._gateway, None
        if gateway is not None and self._owned:
            try:
                gateway.revoke_self()
            except VaultError as err:
                log.warning("%s", err)


@dataclass
class Signer:
    settings: SignerSettings
    kube: KubeGateway
    vault: VaultSigner
    elector: LeaseElector
    metrics: SignerMetrics = field(default_factory=SignerMetrics)
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    rng: random.Random = field(default_factory=random.Random)
    heartbeat: Heartbeat = field(default_factory=lambda: Heartbeat(120))

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self.failures = 0

    # --- one CSR --------------------------------------------------------------------------------

    def handle(self, csr: Obj) -> Verdict | None:
        """Decide and act on one CSR; returns what was done (None: nothing to do or not leader)."""
        verdict = self._decide(csr)
        if verdict.decision is Decision.SKIP or not self.elector.is_leader():
            return None
        fresh = self.kube.read_csr(csr["metadata"]["name"])  # another replica may have acted already
        if fresh is None:
            return None
        verdict = self._decide(fresh)
        if verdict.decision is Decision.SKIP:
            return None
        try:
            self._act(fresh, verdict)
        except KubeConflict as err:
            log.info("CSR %s changed while being handled, deciding again on the next event: %s",
                     fresh["metadata"]["name"], err)
            return None
        return verdict

    def _decide(self, csr: Obj) -> Verdict:
        return review_csr(view_of(csr), self.settings.config, self.settings.approve_serving)

    def _act(self, csr: Obj, verdict: Verdict) -> None:
        name, now = csr["metadata"]["name"], self.clock()
        if verdict.decision is Decision.APPROVE:
            self.kube.add_condition(csr, "Approved", verdict.reason, verdict.message, now)
            self.metrics.approved.inc()
            log.info("approved CSR %s: %s", name, verdict.message)
        elif verdict.decision is Decision.DENY:
            self.kube.add_condition(csr, "Denied", verdict.reason, verdict.message, now)
            self.metrics.denied.labels(verdict.reason).inc()
            log.info("denied CSR %s (%s): %s", name, verdict.reason, verdict.message)
        elif verdict.decision is Decision.FAIL:
            self._fail(csr, verdict.reason, verdict.message)
        else:
            self._sign(csr, verdict)

    def _fail(self, csr: Obj, reason: str, message: str) -> None:
        self.kube.add_condition(csr, "Failed", reason, message, self.clock())
        self.metrics.failed.labels(reason).inc()
        log.info("refused CSR %s (%s): %s", csr["metadata"]["name"], reason, message)

    def _sign(self, csr: Obj, verdict: Verdict) -> None:
        view = view_of(csr)
        try:
            bundle = self.vault.sign(verdict.mount, verdict.role, view.request.decode(), verdict.ttl_seconds)
        except VaultRequestRefused as err:  # the role refused what the checks let through: final
            self._fail(csr, "VaultRefused", str(err))
            return
        except VaultK8sError as err:  # Vault down or sealed, token expired, credential files unreadable
            self.metrics.retries.labels("vault").inc()
            raise Transient(str(err)) from None
        self.kube.set_certificate(csr, bundle)
        self.metrics.signed.labels(view.signer_name).inc()
        log.info("signed CSR %s with %s/%s for %ds", view.name, verdict.mount, verdict.role, verdict.ttl_seconds)

    # --- the loop -------------------------------------------------------------------------------

    def sync(self) -> str:
        """Handle every CSR; returns the resourceVersion to watch from."""
        items, version = self.kube.list_csrs()
        for csr in items:
            self.handle(csr)
        self.metrics.last_sync.set(time.time())
        return version

    def run(self) -> None:
        """Until stop(): while leader, list then watch (re-listing every resync), backing off on failures."""
        version, listed = None, 0.0
        while not self._stop.is_set():
            self.heartbeat.beat()
            if not self.elector.is_leader():
                version = None
                self._stop.wait(1.0)
                continue
            try:
                if version is None or time.monotonic() - listed > self.settings.resync_seconds:
                    version, listed = self.sync(), time.monotonic()
                version = self._watch(version)
                self.failures = 0
            except KubeConflict:
                version = None  # the watch expired (410) or an object moved: list again now
            except (Transient, KubeError) as err:
                if isinstance(err, KubeError):
                    self.metrics.retries.labels("kubernetes").inc()
                self.failures += 1
                delay = backoff_seconds(self.failures, self.rng)
                log.warning("retrying in %.1fs (%d in a row): %s", delay, self.failures, err)
                version = None
                self._stop.wait(delay)

    def _watch(self, version: str) -> str:
        for kind, obj in self.kube.watch_csrs(version, self.settings.watch_seconds):
            self.heartbeat.beat()
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED"):
                self.handle(obj)
            if self._stop.is_set() or not self.elector.is_leader():
                break
        return version

    def stop(self) -> None:
        self._stop.set()


def run_elector(elector: LeaseElector, metrics: SignerMetrics, stop: threading.Event, period: float = 2.0) -> None:
    """Renew (or try to take) the lease every period until stop; then release it."""
    while not stop.is_set():
        metrics.leader.set(1 if elector.try_acquire_or_renew() else 0)
        stop.wait(period)
    elector.release()
    metrics.leader.set(0)
