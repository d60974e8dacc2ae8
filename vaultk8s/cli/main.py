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
    from vaultk8s.cli import bootstrap, certs, node, policy

    app.command("bootstrap")(bootstrap.bootstrap)
    app.add_typer(certs.app, name="certs", help="Inspect issued certificates.")
    app.add_typer(policy.app, name="policy", help="Render, apply, diff and review the Vault policies.")
    app.add_typer(node.app, name="node", help="Per-node machine credentials: issue and revoke.")


_register()


def run() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        code = app(standalone_mode=False)  # typer.Exit(n) comes back as n without standalone mode
    except VaultK8sError as err:
        if debug:
            raise
        typer.echo(f"error: {err}", err=True)
        sys.exit(err.exit_code)
    except typer.exceptions.TyperException as err:  # usage errors: click's one message, not a traceback
        if hasattr(err, "show"):
            err.show()
        else:
            typer.echo("error: aborted", err=True)
        sys.exit(getattr(err, "exit_code", 1) or 1)
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
