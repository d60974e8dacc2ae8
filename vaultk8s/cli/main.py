"""The `vaultk8s` command: registers each command group and maps errors to one line + exit code."""

from __future__ import annotations

import sys

import typer

from vaultk8s.errors import VaultK8sError, one_line

try:  # typer >= 0.2x raises its vendored click's exceptions; older typer raises click's own
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

# Which module raises Exit/Abort varies across typer releases; catch whichever exist.
_EXIT = tuple({typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)})
_ABORT = tuple({typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)})

app = typer.Typer(
    name="vaultk8s",
    help="Make Vault/OpenBao the certificate authority of a Kubernetes control plane.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # plain click help: see common.command_group
)


def _version(value: bool) -> None:
    if value:
        from vaultk8s import __version__

        typer.echo(f"vaultk8s {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Make Vault/OpenBao the certificate authority of a Kubernetes control plane."""


def _register() -> None:
    """Import each command group here; one line per group keeps merges trivial."""
    from vaultk8s.cli import adopt
    from vaultk8s.cli import agent
    from vaultk8s.cli import bootstrap
    from vaultk8s.cli import ca
    from vaultk8s.cli import certs
    from vaultk8s.cli import dev
    from vaultk8s.cli import hsm
    from vaultk8s.cli import node
    from vaultk8s.cli import policy
    from vaultk8s.cli import sa
    from vaultk8s.cli import signer
    from vaultk8s.cli import status

    app.command("bootstrap")(bootstrap.bootstrap)
    app.command("adopt")(adopt.adopt)
    app.command("agent")(agent.agent)
    app.command("signer")(signer.signer)
    app.command("signer-credentials")(signer.signer_credentials)
    app.command("status")(status.status)
    app.add_typer(ca.app, name="ca", help="Rotate the three CAs without downtime, and show their state.")
    app.add_typer(certs.app, name="certs", help="Inspect issued certificates.")
    app.add_typer(dev.app, name="dev", help="Run a local OpenBao (raft + TLS) for development and tests.")
    app.add_typer(hsm.app, name="hsm", help="Root CA keys in a PKCS#11 token (HSM mode).")
    app.add_typer(policy.app, name="policy", help="Render, apply, diff and review the Vault policies.")
    app.add_typer(node.app, name="node", help="Per-node machine credentials: issue and revoke.")
    app.add_typer(sa.app, name="sa", help="Rotate and inspect the service-account signing keys.")


_register()


def _usage_message(err: Exception) -> str:
    """click's message on one line, with where to read the usage instead of printing it."""
    message = err.format_message() if hasattr(err, "format_message") else str(err)
    ctx = getattr(err, "ctx", None)
    return f"{message} (see `{ctx.command_path} --help`)" if ctx is not None else message


PLUGIN_NAME = "kubectl vaultk8s"  # installed as kubectl-vaultk8s: kubectl's (and krew's) plugin naming


def run_plugin() -> int:
    """`kubectl vaultk8s ...`: kubectl execs kubectl-vaultk8s with the rest of the arguments."""
    return run(prog_name=PLUGIN_NAME)


def run(prog_name: str | None = None) -> int:
    """Console entry point; returns the exit code (console scripts pass it to sys.exit)."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        # standalone_mode=False: our errors reach us instead of click's generic handler; click then
        # returns the command's value, or the code of a typer.Exit / ctx.exit (also after --help).
        result = app(standalone_mode=False, prog_name=prog_name)
    except VaultK8sError as err:
        if debug:
            raise
        typer.echo(f"error: {one_line(str(err))}", err=True)
        return err.exit_code
    except click_exceptions.ClickException as err:  # usage errors: bad flag, missing argument
        typer.echo(f"error: {one_line(_usage_message(err), 500)}", err=True)
        return err.exit_code
    except _EXIT as err:
        return err.exit_code
    except (*_ABORT, KeyboardInterrupt):
        typer.echo("error: interrupted", err=True)
        return 130
    except Exception as err:  # a bug, not bad input: still one line unless --debug
        if debug:
            raise
        typer.echo(f"error: unexpected {type(err).__name__}: {one_line(str(err), 300)} "
                   "(re-run with --debug for a traceback)", err=True)
        return 1
    return result if isinstance(result, int) else 0
