"""The CSR signer: list + watch CertificateSigningRequests, decide each with plan.csr_review, act.

Only the lease holder writes (leader.py). Before acting on a CSR it re-reads it and decides again
on the fresh object, and every write carries that object's resourceVersion: a CSR another replica
or a human changed meanwhile is left for the next event instead of being signed twice. Transient
failures (Vault down or sealed, an expired token, the API server unreachable) are retried with
backoff and a full re-list; they never become a Failed condition. Only a refusal does.
A list (start-up, a resync, after an outage) is handled by `workers` threads at once: a backlog of
a thousand CSRs is signed in parallel, each CSR still by one thread; the watch handles one event
at a time.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, TYPE_CHECKING

from vaultk8s.config import ClusterConfig
from vaultk8s.durations import rfc3339
from vaultk8s.errors import (KubeConflict, KubeError, PermissionDeniedError, StoreError, VaultError, VaultK8sError,
                             VaultRequestRefused)
from vaultk8s.ops import signer_auth
from vaultk8s.ops.defaults import DEFAULT_SIGNER_WORKERS
from vaultk8s.ops.node import SECRET_ID_FILE, WRAPPED_SECRET_ID_FILE, authenticate
from vaultk8s.ops.status import vault_tls_expiries
from vaultk8s.plan.csr_review import Decision, Verdict, review_csr, skipped, status_certificate
from vaultk8s.signer.kube import KubeGateway, Obj, view_of
from vaultk8s.signer.leader import LeaseElector
from vaultk8s.signer.metrics import Heartbeat, SignerMetrics
from vaultk8s.store.atomic import read_file

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

log = logging.getLogger("vaultk8s.signer")

MAX_BACKOFF_SECONDS = 60.0
MIN_RELOGIN_SECONDS = 5.0  # a clock far off Vault's must not turn secret_id replacement into a login loop
SECRET_ID_RETRY_SECONDS = 60.0


class Transient(Exception):
    """A failure worth retrying: nothing was written to the CSR."""


@dataclass(frozen=True)
class SignerSettings:
    config: ClusterConfig
    approve_serving: bool = False
    credentials_dir: Path | None = None  # role_id / secret_id from `vaultk8s signer-credentials`
    token_file: Path | None = None
    jwt_file: Path | None = None  # the projected ServiceAccount token (JWT login, role csr-signer)
    resync_seconds: int = 300
    watch_seconds: int = 30  # a watch ends this often, so shutdown and lost leadership are noticed
    relogin_fraction: float = 2 / 3  # of the login's lease: a 1-minute token_ttl logs in again at 40 s
    workers: int = DEFAULT_SIGNER_WORKERS  # CSRs of one list handled at once

    @property
    def login_method(self) -> str:
        return "jwt" if self.jwt_file else "approle" if self.credentials_dir else "token"


def backoff_seconds(failures: int, rng: random.Random) -> float:
    """Full-jitter exponential backoff: 0.5s, 1s, 2s ... capped at a minute."""
    ceiling = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(failures, 10))
    return ceiling / 2 + ceiling / 2 * rng.random()


LOGIN_FAILURE_REASONS = ("rejected", "credential-unreadable", "unavailable")


def login_failure_reason(err: VaultK8sError) -> str:
    """The `reason` label of a failed login: Vault refused the credential, the credential file is
    unreadable, or Vault could not be asked."""
    if isinstance(err, (VaultRequestRefused, PermissionDeniedError)):
        return "rejected"
    if isinstance(err, StoreError):
        return "credential-unreadable"
    return "unavailable"


class VaultSigner:
    """Signs with a node's role. Logs in lazily; any failure drops the session so the retry logs in again."""

    def __init__(self, connect: Callable[[], VaultGateway], settings: SignerSettings,
                 monotonic: Callable[[], float] = time.monotonic, metrics: SignerMetrics | None = None,
                 clock: Callable[[], float] = time.time):
        self.connect, self.settings, self.monotonic, self.clock = connect, settings, monotonic, clock
        self.metrics = metrics or SignerMetrics()
        for reason in LOGIN_FAILURE_REASONS:  # at 0 from the start, so increase() sees the first failure
            self.metrics.login_failures.labels(settings.login_method, reason)
        self._gateway: VaultGateway | None = None
        self._login_lock = threading.RLock()  # one login however many threads sign
        self._owned = False
        self._relogin_at = self._expires_at = 0.0  # monotonic
        self._refused_secret_id: str | None = None  # digest of a secret_id Vault refused: not sent again
        self._tls_unread: VaultGateway | None = None  # logged in since Vault's TLS was last read

    def sign(self, mount: str, role: str, csr_pem: str, ttl_seconds: int) -> bytes:
        gateway = self.session()
        try:
            try:
                data = gateway.sign(mount, role, csr_pem, ttl_seconds)
            except PermissionDeniedError:
                if not self._superseded(gateway):
                    raise
                # another thread logged in again meanwhile and revoked this token; a 403 issued
                # nothing, so once more with the new session
                gateway = self.session()
                data = gateway.sign(mount, role, csr_pem, ttl_seconds)
        except VaultRequestRefused:
            raise
        except VaultError:
            with self._login_lock:
                if self._gateway is gateway:  # not one another thread has logged in since
                    self._gateway = None
            raise
        chain = list(data.get("ca_chain") or []) or [data.get("issuing_ca") or ""]
        return status_certificate(data["certificate"], [c for c in chain if c])

    def _superseded(self, gateway: VaultGateway) -> bool:
        with self._login_lock:
            return self._gateway is not None and self._gateway is not gateway

    def session(self) -> VaultGateway:
        """The logged-in gateway; logs in (again) first when there is none or 2/3 of its lease passed."""
        with self._login_lock:
            gateway = self._session()
        self._observe_vault_tls()
        return gateway

    def _session(self) -> VaultGateway:
        if self._gateway is not None and self._owned and self.monotonic() >= self._relogin_at:
            self.close()
        if self._gateway is None:
            gateway = self.connect()
            try:
                self._owned, lease = self._login(gateway)
                gateway.check_ready()
            except VaultK8sError as err:
                self.metrics.login_failures.labels(self.settings.login_method, login_failure_reason(err)).inc()
                if isinstance(err, VaultRequestRefused):  # the credential, not the CSR: retried, never Failed
                    raise VaultError(f"the signer's {self.settings.login_method} login was refused: {err}") from None
                raise
            self.metrics.logged_in(self.settings.login_method, self.clock(), lease)
            self._tls_unread = gateway
            self._gateway = gateway
            now = self.monotonic()
            token_in = lease * self.settings.relogin_fraction if lease else float("inf")
            # the secret_id is replaced at a login: one is due when either ends its 2/3
            self._relogin_at = now + min(token_in, max(MIN_RELOGIN_SECONDS, self._refresh_secret_id(gateway)))
            self._expires_at = now + lease if lease else float("inf")
        return self._gateway

    def _login(self, gateway: VaultGateway) -> tuple[bool, int]:
        """(owned, lease seconds): log in with the projected JWT, the AppRole files or a token."""
        if self.settings.jwt_file is not None:
            login = signer_auth.login(self.settings.config, gateway, self.settings.jwt_file)
            if login.credential_expiry is not None:
                self.metrics.credential_expiry.labels("jwt").set(login.credential_expiry.timestamp())
            return True, login.lease_seconds
        if self.settings.credentials_dir is None:
            return authenticate(gateway, None, self.settings.token_file), gateway.token_ttl()
        held = self._held_secret_id()
        if held is not None and held == self._refused_secret_id:
            raise VaultRequestRefused(
                f"Vault refused the secret_id in {self.settings.credentials_dir} before; it is not tried again, as "
                "every refusal counts toward OpenBao's lockout of the role_id: write a new one with "
                f"`vaultk8s signer-credentials --out {self.settings.credentials_dir}`")
        try:
            authenticate(gateway, self.settings.credentials_dir)
        except VaultRequestRefused:  # destroyed or lapsed (400): only a new file can help
            self._refused_secret_id = held
            raise
        return True, gateway.token_ttl()

    def _held_secret_id(self) -> str | None:
        """A digest of the directory's secret_id (plain or wrapped), to remember one Vault refused."""
        for name in (WRAPPED_SECRET_ID_FILE, SECRET_ID_FILE):  # the order login_from_dir reads them in
            data = read_file(self.settings.credentials_dir / name)
            if data:
                return hashlib.sha256(data.strip()).hexdigest()
        return None

    def _refresh_secret_id(self, gateway: VaultGateway) -> float:
        """Seconds until the AppRole secret_id is to be replaced (inf: no AppRole, or no end), after
        replacing it when due. A failed replacement keeps the old one and is tried again soon."""
        if self.settings.credentials_dir is None:
            return float("inf")
        now = self.clock()
        try:
            state = signer_auth.refresh_secret_id(self.settings.config, gateway, self.settings.credentials_dir,
                                                  datetime.fromtimestamp(now, timezone.utc))
        except VaultK8sError as err:
            hint = " (an admin's `vaultk8s policy apply` grants it)" if isinstance(err, PermissionDeniedError) else ""
            log.warning("could not replace the AppRole secret_id in %s, keeping the one it has%s: %s",
                        self.settings.credentials_dir, hint, err)
            return SECRET_ID_RETRY_SECONDS
        if state.rotated:
            log.info("replaced the AppRole secret_id in %s (the old one is destroyed); the new one lapses at %s",
                     self.settings.credentials_dir, rfc3339(state.expiry) if state.expiry else "no end")
        self.metrics.credential_expiry.labels("secret_id").set(state.expiry.timestamp() if state.expiry else 0)
        self.metrics.credential_issued.labels("secret_id").set(state.issued.timestamp() if state.issued else 0)
        return state.renew_at.timestamp() - now if state.renew_at else float("inf")

    def _observe_vault_tls(self) -> None:
        """After a login, Vault's own certificates, which nobody in vaultk8s renews: the agents' gauge,
        here too. Outside the login lock: a Vault node that does not answer the handshake holds up
        this caller for TLS_PROBE_SECONDS, not every thread that signs."""
        with self._login_lock:
            gateway, self._tls_unread = self._tls_unread, None
        if gateway is None:
            return
        expiries = vault_tls_expiries(gateway, log)
        if expiries is not None:
            self.metrics.vault_tls.observe((), expiries)

    def keep_logged_in(self) -> float:
        """Log in again now if it is due, though no CSR came: a standby or a quiet signer on AppRole must
        replace its secret_id before it lapses. Returns the seconds until the next one is due."""
        with self._login_lock:
            if self._gateway is None or self.monotonic() >= self._relogin_at:
                self._session()
            due_in = self._relogin_at - self.monotonic()
        self._observe_vault_tls()
        return due_in

    def close(self) -> None:
        """Revoke a token this process logged in for; the next sign logs in again."""
        with self._login_lock:
            gateway, self._gateway = self._gateway, None
        if gateway is not None and self._owned and self.monotonic() < self._expires_at:  # else nothing to revoke
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

    def handle(self, csr: Obj, listed_in_term: int | None = None) -> Verdict | None:
        """Decide and act on one CSR; returns what was done (None: nothing to do or not leader).

        A CSR is read again first (another replica may have acted on it), unless it comes from a
        list this replica took in its leadership term still running: then no other replica has acted
        since, and a third party's change meanwhile fails the write on its resourceVersion."""
        if not self._awaits_signer(csr) or not self.elector.is_leader():
            return None
        if listed_in_term is None or listed_in_term != self.elector.term:
            csr = self.kube.read_csr(csr["metadata"]["name"])
            if csr is None:
                return None
        verdict = self._decide(csr)
        if verdict.decision is Decision.SKIP:
            return None
        try:
            self._act(csr, verdict)
        except KubeConflict as err:
            log.info("CSR %s changed while being handled, deciding again on the next event: %s",
                     csr["metadata"]["name"], err)
            return None
        return verdict

    def _awaits_signer(self, csr: Obj) -> bool:
        return skipped(view_of(csr), self.settings.approve_serving) is None

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
        """Handle every CSR, `workers` at a time; returns the resourceVersion to watch from. After the
        first failure the CSRs not yet started are left, and it is raised (the retry lists again)."""
        term = self.elector.term  # before is_leader: a term that ends meanwhile makes every CSR read again
        term_of_list = term if self.elector.is_leader() else None
        items, version = self.kube.list_csrs()
        pending = [csr for csr in items if self._awaits_signer(csr)]
        failed: list[Exception] = []
        with ThreadPoolExecutor(max_workers=self.settings.workers, thread_name_prefix="csr") as pool:
            list(pool.map(lambda csr: self._handle_unless_failed(csr, failed, term_of_list), pending))
        if failed:
            raise failed[0]
        self.metrics.last_sync.set(time.time())
        return version

    def _handle_unless_failed(self, csr: Obj, failed: list[Exception], listed_in_term: int | None) -> None:
        if failed:  # Vault or the API server is failing: one backoff, not one per pending CSR
            return
        self.heartbeat.beat()
        try:
            self.handle(csr, listed_in_term)
        except (Transient, KubeError) as err:
            failed.append(err)

    def run(self) -> None:
        """Until stop(): while leader, list then watch (re-listing every resync), backing off on failures."""
        version, listed = None, 0.0
        while not self._stop.is_set():
            self.heartbeat.beat()
            if not self.elector.wait_for_leadership(1.0):
                version = None
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
        self.elector.wake()  # a standby waiting for the lease sees the stop at once


def run_elector(elector: LeaseElector, metrics: SignerMetrics, stop: threading.Event, period: float = 2.0) -> None:
    """Renew (or try to take) the lease every period until stop; then release it (also when a renewal raised)."""
    try:
        while not stop.is_set():
            metrics.leader.set(1 if elector.try_acquire_or_renew() else 0)
            stop.wait(period)
    finally:
        elector.release()
        metrics.leader.set(0)


def run_login_keeper(vault: VaultSigner, stop: threading.Event, longest: float = 60.0) -> None:
    """Keep an AppRole signer logged in, and so its secret_id replaced, whether or not CSRs come."""
    while not stop.is_set():
        try:
            delay = vault.keep_logged_in()
        except VaultK8sError as err:  # Vault down or the credential refused: counted and retried
            log.warning("Vault login failed, trying again in %.0fs: %s", SECRET_ID_RETRY_SECONDS, err)
            delay = SECRET_ID_RETRY_SECONDS
        stop.wait(min(max(delay, 1.0), longest))


def run_until_stopped(runner: Signer, elector: LeaseElector, stop: threading.Event, poll: float = 1.0,
                      lease_period: float = 2.0, keep_logged_in: VaultSigner | None = None) -> str | None:
    """Run the signer loop and the lease loop (and with keep_logged_in, an AppRole signer's login
    keeper) until stop is set or one ends by itself; then stop them all.

    Returns the name of a loop that ended by itself, None after a requested stop. Watching only the
    signer loop was not enough: with the lease loop gone, leadership lapses and the signer idles as a
    standby forever while its heartbeat (and so /healthz) stays green. Exiting lets the supervisor
    restart it.
    """
    loops = {"lease": lambda: run_elector(elector, runner.metrics, stop, lease_period), "signer": runner.run}
    if keep_logged_in is not None:
        loops["login"] = lambda: run_login_keeper(keep_logged_in, stop)
    threads = {name: threading.Thread(target=_logged, args=(name, loop), name=name, daemon=True)
               for name, loop in loops.items()}
    for thread in threads.values():
        thread.start()
    while not stop.is_set() and all(thread.is_alive() for thread in threads.values()):
        stop.wait(poll)
    ended = None if stop.is_set() else next(name for name, thread in threads.items() if not thread.is_alive())
    runner.stop()
    stop.set()
    threads["lease"].join(timeout=10)  # releases the lease, so a standby takes over at once
    if "login" in threads:  # a login it finishes after the caller's close() would leave a token unrevoked
        threads["login"].join(timeout=10)
    return ended


def _logged(name: str, loop: Callable[[], None]) -> None:
    try:
        loop()
    except Exception:  # noqa: BLE001 - a bug: its traceback goes to the log, and the process exits non-zero
        log.exception("the %s loop stopped on an unexpected error", name)
