"""Riding through an OpenBao/Vault HA failover: which failures may be retried, for which calls.

Two layers. The transport (urllib3 Retry on the session, see gateway._RETRY) re-sends what never
reached a server: refused connections and 429/502/503/504. This layer sits in hvac's adapter, the
one place every request passes, and handles what urllib3 cannot see:

* UNSENT: the request was certainly not processed: connection refused (the active node died, or
  a standby redirected us to it), 503 (sealed/standby), 500 "active cluster node not found"
  (a standby during an election or a step-down), or a fresh KV v2 mount still upgrading its
  storage (400, any node). Any call may be repeated.
* AMBIGUOUS: the request may have been processed: the connection broke after it was sent, a read
  timeout, any other 5xx. Only calls marked repeatable (GET/LIST/DELETE, and writes whose repeat
  ends in the same state: roles, policies, config, signing a CSR) are repeated; the others (a
  root, a secret_id, a login, an unwrap, a CAS write) raise, and their caller re-reads and decides.

Read-your-writes: OpenBao standbys serve reads from their own replica, which may lag the active
node by a moment (a role read back right after its write may be missing). Every response carries
X-Vault-Index; we send the latest one back with `X-Vault-Inconsistent: forward-active-node`, so a
standby that has not caught up with our own writes forwards the request instead of answering stale.

When the node VAULT_ADDR names is gone for good, requests move to a peer learned from
sys/ha-status / sys/leader while it was up (same CA: VAULT_CACERT must verify them too).
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import json
import threading
import time
from typing import Iterator

import hvac.exceptions as hv
import requests
import urllib3.exceptions
from hvac.adapters import JSONAdapter

FAILOVER_SECONDS = 45.0  # an election takes a few seconds; a node that stays down is reported after this
_FIRST_DELAY, _MAX_DELAY = 0.25, 2.0
_NO_LEADER = ("active cluster node not found", "local node not active", "node not active", "no active node")
# A new KV v2 mount answers this (400) for a moment, on every node, before it takes any request.
_KV_UPGRADING = ("upgrading from non-versioned to versioned", "waiting for the primary to upgrade")
# OpenBao's PKI answers "not there" with a 500: an answer, not a fault; repeating it waited 45 s.
_PKI_NOT_FOUND = ("no default issuer currently configured", "unable to find pki issuer")

INDEX_HEADER = "X-Vault-Index"
UNSENT, AMBIGUOUS, LAGGING = "unsent", "ambiguous", "lagging"
# A standby routes a request by its own copy of the mount table before forwarding it, so just
# after a mount is enabled it may answer 404 "no handler for route" for a moment. A path that
# really has no mount answers that too, so this is only waited out briefly.
LAG_SECONDS = 3.0
_SAFE_METHODS = frozenset({"GET", "HEAD", "LIST", "DELETE", "OPTIONS"})
_repeatable: contextvars.ContextVar[bool] = contextvars.ContextVar("vaultk8s_repeatable", default=False)
_lag_waited: contextvars.ContextVar[bool] = contextvars.ContextVar("vaultk8s_lag_waited", default=True)


@contextlib.contextmanager
def repeatable() -> Iterator[None]:
    """Mark the writes made inside as safe to repeat after an ambiguous failure (idempotent)."""
    token = _repeatable.set(True)
    try:
        yield
    finally:
        _repeatable.reset(token)


@contextlib.contextmanager
def missing_mounts_answered_at_once() -> Iterator[None]:
    """Inside, "no handler for route" is the answer (nothing mounted there), not a standby's lag to
    wait out: for probes where a missing mount is the common case (LAG_SECONDS each otherwise)."""
    token = _lag_waited.set(False)
    try:
        yield
    finally:
        _lag_waited.reset(token)


def classify(err: BaseException) -> str | None:
    """UNSENT, AMBIGUOUS, or None for an answer that retrying will not change (400, 403, ...)."""
    if isinstance(err, requests.exceptions.SSLError):
        return None
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return UNSENT
    if isinstance(err, requests.exceptions.ConnectionError):
        reason = getattr(err.args[0], "reason", None) if err.args else None
        return UNSENT if isinstance(reason, urllib3.exceptions.NewConnectionError) else AMBIGUOUS
    if isinstance(err, requests.exceptions.Timeout):
        return AMBIGUOUS
    if isinstance(err, hv.VaultDown):
        return UNSENT
    if isinstance(err, hv.InvalidRequest) and any(m in str(err).lower() for m in _KV_UPGRADING):
        return UNSENT
    if isinstance(err, hv.InvalidPath) and "no handler for route" in str(err).lower():
        return LAGGING
    if isinstance(err, (hv.InternalServerError, hv.BadGateway)):
        text = str(err).lower()
        if any(m in text for m in _PKI_NOT_FOUND):
            return None
        return UNSENT if any(m in text for m in _NO_LEADER) else AMBIGUOUS
    return None


class FailoverAdapter(JSONAdapter):
    """hvac's JSON adapter, repeating a request through a failover as the rules above allow."""

    failover_seconds = FAILOVER_SECONDS

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._peers: list[str] = []
        self._lock = threading.Lock()
        self._index: tuple[int, str] | None = None  # (storage index, the opaque header value)
        self._answered = False  # until a first answer, an unreachable address is a mistake, not a failover
        self.session.hooks["response"].append(self._note_index)

    def _note_index(self, response: requests.Response, *args, **kwargs) -> None:
        self._answered = True
        header = response.headers.get(INDEX_HEADER)
        if not header:
            return
        value = _index_value(header)
        with self._lock:
            if self._index is None or value >= self._index[0]:
                self._index = (value, header)

    def _consistency_headers(self, headers: dict | None) -> dict:
        headers = dict(headers or {})
        index = self._index
        if index is not None:
            headers.setdefault(INDEX_HEADER, index[1])
            headers.setdefault("X-Vault-Inconsistent", "forward-active-node")
        return headers

    def remember_peers(self, addrs: list[str]) -> None:
        with self._lock:
            self._peers = [a.rstrip("/") for a in addrs if a and a.rstrip("/") != self.base_uri]

    def peers(self) -> list[str]:
        with self._lock:
            return list(self._peers)

    def request(self, method, url, headers=None, *args, **kwargs):
        started = time.monotonic()
        delay = _FIRST_DELAY
        while True:
            base = self.base_uri
            try:
                return super().request(method, url, self._consistency_headers(headers), *args, **kwargs)
            except (requests.RequestException, hv.VaultError) as err:
                kind = classify(err)
                may_repeat = kind in (UNSENT, LAGGING) or (kind == AMBIGUOUS and self._repeatable(method))
                budget = (LAG_SECONDS if _lag_waited.get() else 0.0) if kind == LAGGING else self.failover_seconds
                if not self._answered:
                    raise  # a wrong VAULT_ADDR fails in seconds (urllib3's own retries), not after a failover wait
                if not may_repeat or time.monotonic() + delay > started + budget:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, _MAX_DELAY)
                if kind == UNSENT and isinstance(err, requests.RequestException):
                    self._move_off(base)

    @staticmethod
    def _repeatable(method: str) -> bool:
        return method.upper() in _SAFE_METHODS or _repeatable.get()

    def _move_off(self, base: str) -> None:
        """Our node refuses connections: if it is really down, continue on a peer that answers."""
        with self._lock:
            if self.base_uri != base or not self._peers or self._answers(base):
                return  # another thread moved already, nowhere to go, or only a redirect target died
            for peer in self._peers:
                if self._answers(peer):
                    self._peers = [p for p in self._peers if p != peer] + [base]
                    self.base_uri = peer
                    return

    def _answers(self, addr: str) -> bool:
        """Unsealed and listening (sys/health is unauthenticated); one try, not the session's retries."""
        probe = requests.Session()
        probe.trust_env, probe.verify, probe.cert = False, self.session.verify, self.session.cert
        try:
            with probe:
                response = probe.get(f"{addr}/v1/sys/health", params={"standbycode": 200}, timeout=3,
                                     allow_redirects=False)
        except requests.RequestException:
            return False
        return response.status_code < 500


def _index_value(header: str) -> int:
    """The storage index inside OpenBao's opaque X-Vault-Index (base64 JSON); 0 when unreadable."""
    try:
        return int(json.loads(base64.b64decode(header))["value"])
    except (ValueError, TypeError, KeyError):
        return 0
