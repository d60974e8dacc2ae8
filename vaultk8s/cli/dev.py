"""`vaultk8s dev ...`: a local OpenBao for development. Export lines go to stdout, progress to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vaultk8s.cli import common
from vaultk8s.errors import ConfigError


app = common.command_group()

DEFAULT_STATE_DIR = Path(".vaultk8s/dev")
StateDir = Annotated[
    Path, typer.Option("--state-dir", file_okay=False, help="Where the server keeps TLS, config, data and keys.")
]
Port = Annotated[
    Optional[int],
    typer.Option(min=1, max=65534, help="Listener port (cluster port is PORT+1; node k of a cluster uses "
                 "PORT+2(k-1) and the next). Default: last used, else 8200."),
]
Nodes = Annotated[
    Optional[int],
    typer.Option("--nodes", min=1, max=7, help="Raft nodes to run (3 for HA). Default: as before, else 1."),
]


def _server(state_dir: Path, port: int | None = None, nodes: int | None = None):
    from vaultk8s.dev import DevServer  # hvac and requests: only for `dev` commands, not every start-up

    return DevServer(state_dir, port, nodes=nodes, progress=lambda msg: typer.echo(msg, err=True))


Hsm = Annotated[
    bool, typer.Option("--hsm", help="Also create (or reuse) a SoftHSM2 token in STATE_DIR/softhsm for HSM mode.")
]


@app.command()
def up(state_dir: StateDir = DEFAULT_STATE_DIR, port: Port = None, nodes: Nodes = None, hsm: Hsm = False) -> None:
    """Start, initialise and unseal the dev server; print export lines for `eval "$(vaultk8s dev up)"`.

    With --nodes 3 VAULT_ADDR names node 1; `sys/ha-status` lists the others.
    """
    exports = _server(state_dir, port, nodes).up().export_lines()
    if hsm:
        from vaultk8s.cli.hsm import dev_token_exports
        from vaultk8s.hsm import init_dev_token  # pkcs11 only when asked for

        exports += dev_token_exports(init_dev_token(state_dir))
    typer.echo(exports, nl=False)


@app.command()
def env(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Print the export lines for the running dev server."""
    typer.echo(_server(state_dir).env().export_lines(), nl=False)


@app.command()
def status(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Show whether the dev server (every node of it) runs; exit 1 if one does not."""
    st = _server(state_dir).status()
    typer.echo(f"running: {_yes_no(st.running)}")
    if st.running:
        typer.echo(f"pid: {st.pid}")
    typer.echo(f"addr: {st.addr}")
    typer.echo(f"initialized: {_yes_no(st.initialized)}")
    typer.echo(f"sealed: {_yes_no(st.sealed)}")
    if len(st.nodes) > 1:
        for index, node in enumerate(st.nodes, 1):
            pid = f" pid {node.pid}" if node.pid else ""
            typer.echo(f"node {index}: {node.addr} {node.role}{pid}")
    if not st.running:
        raise typer.Exit(1)


@app.command()
def down(state_dir: StateDir = DEFAULT_STATE_DIR) -> None:
    """Stop the dev server (every node); its data is kept for the next `up`."""
    if not _server(state_dir).down():
        typer.echo(f"no dev server is running in {state_dir}", err=True)


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


# -- the compose demo: a server in one container, initialised from another (docs/compose.md) --


@app.command()
def serve(
    state_dir: StateDir = Path("/var/lib/vaultk8s/openbao"),
    hostname: str = typer.Option("openbao", "--hostname", help="The name clients use; goes in the TLS SANs."),
    listen: str = typer.Option("0.0.0.0:8200", "--listen", help="HOST:PORT of the API listener (the cluster "
                               "port is PORT+1)."),
    tls_lifetime: str = typer.Option("825d", "--tls-lifetime", help="Lifetime of each listener certificate; "
                                     "a new one is issued from the kept CA at 2/3 of it, and the server reloads it."),
) -> None:
    """Run OpenBao in the foreground (raft + TLS), for a container, renewing its listener certificate.

    OpenBao runs as this process's child: SIGTERM, SIGINT and SIGHUP are passed on, and the exit
    status is the server's.
    """
    import logging

    from vaultk8s.dev.container import prepare_container_server, run_server
    from vaultk8s.serve import parse_listen_addr

    logging.basicConfig(level=logging.INFO, format="%(asctime)s vaultk8s-dev %(levelname)s %(message)s")
    host, port = parse_listen_addr(listen, "--listen")
    if ":" in host or port > 65534:
        raise ConfigError(f"--listen {listen!r}: give an IPv4 address or a host name, and a port below 65535 "
                          "(PORT+1 is the cluster port)", "command line")
    lifetime = common.duration_flag(tls_lifetime, "--tls-lifetime")
    if lifetime.total_seconds() < 3:
        raise ConfigError(f"--tls-lifetime {tls_lifetime!r}: give at least 3s", "command line")
    argv, listener = prepare_container_server(state_dir, hostname, port=port, listen_host=host, tls_lifetime=lifetime)
    raise typer.Exit(run_server(argv, listener))


@app.command("init")
def init(
    addr: str = typer.Option(..., "--addr", help="The server started by `vaultk8s dev serve`, e.g. https://openbao:8200."),
    cacert: Path = typer.Option(..., "--cacert", exists=True, dir_okay=False, help="Its listener CA (ca.pem)."),
    state_dir: StateDir = Path("/var/lib/vaultk8s/operator"),
    timeout: int = typer.Option(60, "--timeout", min=1, help="Seconds to wait for the server to answer."),
) -> None:
    """Initialise (once) and unseal that server; keep its keys in STATE_DIR; print the export lines."""
    from vaultk8s.dev.container import RemoteServer

    server = RemoteServer(state_dir, addr, cacert, progress=lambda msg: typer.echo(msg, err=True),
                          start_timeout=timeout)
    typer.echo(server.up().export_lines(), nl=False)
