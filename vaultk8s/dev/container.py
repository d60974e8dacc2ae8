"""OpenBao for the compose demo: a server in its own container, initialised from another one.

`vaultk8s dev serve` prepares TLS and config in the server's state dir and runs `bao server` as its
child (listening on the container's interfaces, reached by its service name), forwarding SIGTERM,
SIGINT and SIGHUP to it. While it runs it re-issues the listener certificate from the kept CA when
its renewal window opens and sends the server SIGHUP, which loads the new pair: the server may run
for years. `vaultk8s dev init` runs in the operator's container: it initialises and unseals that
server once, keeping the unseal key and root token in its own state dir, so the server's volume
never holds them.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import signal
import subprocess
from pathlib import Path
from typing import Callable

from vaultk8s.dev.listener import ListenerChange, ListenerTls
from vaultk8s.dev.server import DevServer, ServerNode, server_environ, find_bao, render_config
from vaultk8s.dev.tls import SERVER_LIFETIME
from vaultk8s.errors import DevServerError
from vaultk8s.store.atomic import replace_file, secret

PORT = 8200
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
MAX_RENEWAL_WAIT = 3600.0  # seconds: a clock jump or a lost wake-up is noticed within the hour
RENEWAL_RETRY = 60.0  # seconds after a failed re-issue (a full disk): the running server keeps its pair
_DNS_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")

log = logging.getLogger("vaultk8s.dev")


def render_container_config(state_dir: Path, hostname: str, port: int = PORT, listen_host: str = "0.0.0.0") -> str:
    """HCL for a 1-node raft + TLS server listening on the container's interfaces."""
    return render_config(state_dir, port, node_id=hostname, listen_host=listen_host, advertise_host=hostname)


def prepare_container_server(state_dir: Path, hostname: str, *, port: int = PORT, listen_host: str = "0.0.0.0",
                             tls_lifetime: dt.timedelta = SERVER_LIFETIME) -> tuple[list[str], ListenerTls]:
    """Write TLS (made once, re-issued when due) and the config; return the server's argv and its TLS."""
    if len(hostname) > 253 or not _DNS_NAME.fullmatch(hostname):
        raise DevServerError(f"--hostname {hostname[:64]!r} is not a DNS name")
    state_dir = state_dir.absolute()
    listener = ListenerTls(state_dir, (hostname,), tls_lifetime)
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state_dir / "raft").mkdir(mode=0o700, exist_ok=True)
        change = listener.ensure(_now())
        hcl = render_container_config(state_dir, hostname, port, listen_host)
        replace_file(state_dir / "bao.hcl", secret(hcl.encode()))
    except OSError as err:
        raise DevServerError(f"cannot prepare {state_dir}: {err.strerror}") from None
    if change is ListenerChange.NEW_CA:
        log.warning("made a new listener CA in %s: clients must trust its new ca.pem", state_dir)
    return [find_bao(), "server", f"-config={state_dir / 'bao.hcl'}"], listener


def run_server(argv: list[str], listener: ListenerTls, now: Callable[[], dt.datetime] | None = None) -> int:
    """Run the server until it exits, renewing its listener certificate meanwhile; its exit status
    (128 + N when signal N killed it, as a shell reports it)."""
    now = now or _now
    try:
        server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=server_environ())
    except OSError as err:
        raise DevServerError(f"cannot run {argv[0]}: {err.strerror}") from None
    previous = {sig: signal.signal(sig, lambda sig, _frame: server.send_signal(sig)) for sig in FORWARDED_SIGNALS}
    try:
        while True:
            try:
                status = server.wait(timeout=_seconds_until_renewal(listener, now()))
                return status if status >= 0 else 128 - status
            except subprocess.TimeoutExpired:
                _renew(listener, server, now())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:  # an exception here: never leave the server behind
            server.terminate()
            server.wait(timeout=30)


def _renew(listener: ListenerTls, server: subprocess.Popen, now: dt.datetime) -> None:
    try:
        change = listener.ensure(now)
    except (OSError, ValueError) as err:
        log.error("could not re-issue the listener certificate (retrying in %.0fs): %s", RENEWAL_RETRY, err)
        return
    if change is not ListenerChange.NONE:
        log.info("listener certificate %s; reloading the server (SIGHUP)", change.value)
        server.send_signal(signal.SIGHUP)


def _seconds_until_renewal(listener: ListenerTls, now: dt.datetime) -> float:
    due = listener.renew_at()
    if due is None or due <= now:  # its re-issue failed: try again in a while, not in a tight loop
        return RENEWAL_RETRY
    return min(max((due - now).total_seconds(), 1.0), MAX_RENEWAL_WAIT)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class RemoteServer(DevServer):
    """A server this process did not start: `up()` only initialises, unseals and waits for it."""

    manages_tls = False  # the server's own `dev serve` keeps it
    # Over a container network on a busy host init may take longer than the local server's 5s,
    # and a timed-out init would lose the only copy of the unseal key.
    http_timeout = 60

    def __init__(self, state_dir: Path, addr: str, cacert: Path, **kwargs):
        super().__init__(state_dir, **kwargs)
        self._addr = addr.rstrip("/")
        self._cacert = Path(cacert).absolute()

    @property
    def addr(self) -> str:
        return self._addr

    @property
    def cacert(self) -> Path:
        return self._cacert

    @property
    def log_file(self) -> Path:
        return Path("its own log (docker compose logs openbao)")  # only named in error messages

    def nodes(self, port: int | None = None) -> list[ServerNode]:
        return [ServerNode(1, self.state_dir, 0, remote_addr=self._addr, remote_log=self.log_file)]

    def running_pid(self, node: ServerNode) -> int | None:
        return -1  # never started here: waits are bounded by start_timeout alone

    def down(self) -> bool:
        raise DevServerError("a server started elsewhere is stopped there (docker compose stop openbao)")
