"""The `vaultk8s` command: registers each command group and maps errors to one line + exit code."""

from __future__ import annotations

import sys

import typer

from vaultk8s.errors import VaultK8sError

app = typer.Typer(
    name="vaultk8s",
    help="Make Vault/OpenBao the certificate authority of a Kubernetes control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    """Import each command group here; one line per group keeps merges trivial."""
    from vaultk8s.cli import bootstrap, certs, sa

    app.command("bootstrap")(bootstrap.bootstrap)
    app.add_typer(certs.app, name="certs", help="Inspect issued certificates.")
    app.add_typer(sa.app, name="sa", help="Rotate and inspect the service-account signing keys.")


_register()


def run() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app(standalone_mode=False)
    except VaultK8sError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
