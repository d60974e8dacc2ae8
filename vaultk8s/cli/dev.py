"""`vaultk8s dev ...`: a local OpenBao for development. Export lines go to stdout, progress to stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vaultk8s.dev import DevServer

app = typer.Typer(no_args_is_help=True)

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


def _server(state_dir: Path, port: int | None = None, nodes: int | None = None) -> DevServer:
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
