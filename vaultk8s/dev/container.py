"""OpenBao for the compose demo: a server in its own container, initialised from another one.

`vaultk8s dev serve` prepares TLS and config in the server's state dir and execs `bao server`
(listening on the container's interfaces, reached by its service name). `vaultk8s dev init` runs
in the operator's container: it initialises and unseals that server once, keeping the unseal key
and root token in its own state dir, so the server's volume never holds them.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path

from cryptography import x509

from vaultk8s.dev.server import DevServer, ServerNode, server_environ, find_bao, render_config
from vaultk8s.dev.tls import render_tls_material
from vaultk8s.errors import DevServerError
from vaultk8s.store.atomic import public, replace_file, secret

PORT = 8200
_DNS_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def render_container_config(state_dir: Path, hostname: str, port: int = PORT) -> str:
    """HCL for a 1-node raft + TLS server listening on all of the container's interfaces."""
    return render_config(state_dir, port, node_id=hostname, listen_host="0.0.0.0", advertise_host=hostname)


def prepare_container_server(state_dir: Path, hostname: str) -> list[str]:
    """Write TLS (once) and the config; return the argv that runs the server."""
    if len(hostname) > 253 or not _DNS_NAME.fullmatch(hostname):
        raise DevServerError(f"--hostname {hostname[:64]!r} is not a DNS name")
    state_dir = state_dir.absolute()
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (state_dir / "raft").mkdir(mode=0o700, exist_ok=True)
        if not _has_tls_for(state_dir, hostname):
            tls = render_tls_material(dt.datetime.now(dt.timezone.utc), (hostname,))
            # The CA key is not kept: nothing else is ever signed with it.
            replace_file(state_dir / "server.key", secret(tls.server_key))
            replace_file(state_dir / "server.pem", public(tls.server_cert))
            replace_file(state_dir / "ca.pem", public(tls.ca_cert))
        replace_file(state_dir / "bao.hcl", secret(render_container_config(state_dir, hostname).encode()))
    except OSError as err:
        raise DevServerError(f"cannot prepare {state_dir}: {err.strerror}") from None
    return [find_bao(), "server", f"-config={state_dir / 'bao.hcl'}"]


def _has_tls_for(state_dir: Path, hostname: str) -> bool:
    """The listener TLS exists and names hostname (a renamed service gets a new certificate)."""
    if not all((state_dir / n).is_file() for n in ("ca.pem", "server.key")):
        return False
    try:
        cert = x509.load_pem_x509_certificate((state_dir / "server.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return hostname in sans.get_values_for_type(x509.DNSName)


def exec_server(argv: list[str]) -> None:
    """Replace this process with the server (it gets the signals; no token variables reach it)."""
    try:
        os.execve(argv[0], argv, server_environ())
    except OSError as err:
        raise DevServerError(f"cannot run {argv[0]}: {err.strerror}") from None


class RemoteServer(DevServer):
    """A server this process did not start: `up()` only initialises, unseals and waits for it."""

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
