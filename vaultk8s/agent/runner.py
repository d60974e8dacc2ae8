"""The renewal agent: a loop around ops.renew with the clock, the wait and randomness injected.

One round: authenticate (the node's certificate once enrolled, else the enrolment secret_id from
`vaultk8s node credentials`, see agent/identity.py; or a token file), renew
what is due on this node, refresh its kubeconfigs, run the reload hooks once for the batch, drop
the round's AppRole token. Then sleep until the earliest next renewal, or back off after a failure.
A wake-up (SIGHUP) renews everything now; stop ends the loop between rounds. `health()` and
`readiness()` back /healthz and /readyz; `on_ready` runs once, after the first good round.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, TYPE_CHECKING

from vaultk8s import catalog
from vaultk8s.plan import schedule
from vaultk8s.agent.identity import APPROLE, CERT, Login, NodeLogin
from vaultk8s.agent.metrics import AgentMetrics
from vaultk8s.agent.reload import ExecHook, SignalHook
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import VaultError, VaultK8sError
from vaultk8s.ops.health import node_health
from vaultk8s.ops.kubeconfigs import ensure_node_kubeconfigs
from vaultk8s.ops.node import authenticate
from vaultk8s.ops.renew import RenewalResult, renew_node
from vaultk8s.ops.status import vault_tls_expiries
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

log = logging.getLogger("vaultk8s.agent")


@dataclass(frozen=True)
class AgentSettings:
    config: ClusterConfig
    node: str
    output: NodeOutput
    credentials_dir: Path | None = None  # role_id / secret_id from `vaultk8s node credentials`
    token_file: Path | None = None
    hooks: tuple[ExecHook | SignalHook, ...] = ()
    idle: timedelta = timedelta(hours=1)


@dataclass
class Agent:
    settings: AgentSettings
    connect: Callable[[], VaultGateway]
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    rng: random.Random = field(default_factory=random.Random)
    metrics: AgentMetrics = field(default_factory=AgentMetrics)
    failures: int = 0
    on_ready: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._force_next = False
        self._pending: set[str] = set()  # written files whose reload has not succeeded yet
        self._last_error = ""
        self._seed = self.rng.getrandbits(32)  # this agent's jitter, stable across its rounds
        self._started = self.clock()  # certificates young then get their first renewal spread
        self._vault_failing = False  # the last round failed talking to Vault (not e.g. a reload hook)
        self.metrics.start(self.settings.node, (CERT, APPROLE))
        creds = self.settings.credentials_dir
        self._login = NodeLogin(self.settings.config, self.settings.node, self.settings.output, Path(creds),
                                self.metrics) if creds is not None else None
        self.metrics.leaf_ttl.labels(self.settings.node).set(self.settings.config.leaf_ttl.total_seconds())

    # --- one round ------------------------------------------------------------------------------

    def renew_once(self, force: bool = False) -> RenewalResult:
        gateway = self.connect()
        login = self._authenticate(gateway)
        try:
            gateway.check_ready()
            result = renew_node(self.settings.config, self.settings.node, self.settings.output, gateway,
                                now=self.clock(), seed=self._seed, force=force, started=self._started)
            if login is not None and self._login is not None:  # done enrolling: drop the secret_id
                self._login.enrolled(gateway, login, self.clock())
            self._observe_vault_tls(gateway)
        finally:
            if login is not None:
                _quietly(gateway.revoke_self)  # a round's token is not left alive for nobody
        node = self.settings.config.node(self.settings.node)
        written = ensure_node_kubeconfigs(node, self.settings.config, self.settings.output.root.parent,
                                          output=self.settings.output, skip_missing=True)
        renewed = result.renewed + [a.target.split("/", 1)[1] for a in written]
        for name, reason in result.reasons.items():
            log.info("renewed pki/%s (%s)", name, reason)
        self._pending.update(renewed)
        if self._pending:
            self._run_hooks(sorted(self._pending))
            self._pending.clear()
        self.metrics.observe(self.settings.node, result, self.clock())
        return result

    def _observe_vault_tls(self, gateway: VaultGateway) -> None:
        """Vault's own certificates, which nobody in vaultk8s renews: a metric to alert on."""
        expiries = vault_tls_expiries(gateway, log)
        if expiries is not None:
            self.metrics.observe_vault_tls(self.settings.node, expiries)

    def _authenticate(self, gateway: VaultGateway) -> Login | None:
        """The round's login when it made one (and so owns a token to revoke); None for a given token."""
        if self._login is not None:
            return self._login.login(gateway, self.clock())
        authenticate(gateway, None, self.settings.token_file)
        return None

    def _run_hooks(self, renewed: list[str]) -> None:
        env = dict(os.environ, VAULTK8S_NODE=self.settings.node, VAULTK8S_RENEWED=" ".join(renewed),
                   VAULTK8S_RESTART=" ".join(catalog.components_reading(renewed)))
        for hook in dict.fromkeys(self.settings.hooks):  # each hook once per batch
            hook.run(env)

    # --- health ---------------------------------------------------------------------------------

    def health(self) -> str | None:
        """/healthz: None while every owned certificate is valid and outside its last tenth of life."""
        return node_health(self.settings.config, self.settings.node, self.settings.output, self.clock())

    def readiness(self) -> str | None:
        """/readyz: None once a round has succeeded."""
        if self._ready.is_set():
            return None
        return "no successful renewal round yet" + (f": {self._last_error}" if self._last_error else "")

    # --- the loop -------------------------------------------------------------------------------

    def next_delay(self, result: RenewalResult | None) -> timedelta:
        now = self.clock()
        if result is None and self._vault_failing:
            return schedule.retry_delay(self.failures, self.rng, self._until_expiry(now))
        if result is None:
            return schedule.backoff(self.failures, self.rng, self._until_expiry(now))
        return schedule.next_wake(list(result.next_renewals.values()), now, self.settings.idle) - now

    def run(self, wait: Callable[[float], None] | None = None) -> None:
        """Rounds until stop(); `wait(seconds)` sleeps (tests pass one that moves a fake clock)."""
        wait = wait or self._wake.wait
        while not self._stop.is_set():
            force, self._force_next = self._force_next, False
            if self._vault_failing:
                # After an outage the fleet comes back together: the certificates renewed now are
                # young at this "start", so their next renewal is spread like a fresh fleet's.
                self._started = self.clock()
            try:
                result = self.renew_once(force=force)
                self.failures, self._vault_failing = 0, False
                self._became_ready()
            except VaultK8sError as err:
                self.failures += 1
                self._vault_failing = isinstance(err, VaultError)
                self._last_error = str(err)
                self.metrics.failed(self.settings.node, self.clock())
                log.error("renewal failed (%d in a row): %s", self.failures, err)
                result = None
            if self._stop.is_set():
                break
            delay = self.next_delay(result)
            log.info("next check in %ds", int(delay.total_seconds()))
            self._wake.clear()
            wait(max(0.0, delay.total_seconds()))

    def _became_ready(self) -> None:
        if not self._ready.is_set():
            self._ready.set()
            if self.on_ready is not None:
                self.on_ready()

    def renew_now(self) -> None:
        """SIGHUP: renew every certificate at once, then carry on."""
        self._force_next = True
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _until_expiry(self, now: datetime) -> timedelta | None:
        expiries = self.metrics.expiries(self.settings.node)
        return min(expiries) - now if expiries else None


def _quietly(call: Callable[[], None]) -> None:
    try:
        call()
    except VaultK8sError as err:
        log.warning("%s", err)
