"""`vaultk8s bootstrap`: thin CLI over ops.bootstrap."""

from __future__ import annotations

from pathlib import Path

import typer

from vaultk8s.cli import common
from vaultk8s.ops.defaults import DEFAULT_WORKERS


def bootstrap(
    config: Path = common.ConfigOption,
    out: Path = common.OutDirOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; touch nothing."),
    force_renew: bool = typer.Option(False, "--force-renew", help="Re-issue every leaf certificate (CAs are kept)."),
    workers: int = typer.Option(DEFAULT_WORKERS, "--workers", min=1, max=64,
                                help="Concurrent Vault requests (role reads/writes and signs)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Create the three CA mounts, one role per identity, and every node's certificates.

    Reads VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT, VAULT_NAMESPACE (or BAO_*). Idempotent: a second
    run changes nothing unless a certificate is missing, in its renewal window, or no longer
    matches the catalog.
    """
    from vaultk8s.ops.bootstrap import bootstrap as run_bootstrap

    cluster = common.load(config)
    gateway = common.vault_gateway(pool_size=workers + 2)
    with common.progress_bars(output is common.Output.text) as progress:
        report = run_bootstrap(cluster, out, gateway, now=common.now(), dry_run=dry_run,
                               force_renew=force_renew, workers=workers, progress=progress)
    if common.printed_as_json_or_actions(output, report, dry_run):
        return
    for action in report.actions:
        if action.reason == "CA changed":  # clients holding the old kubeconfig stop trusting the API server
            typer.echo(f"WARNING: {action.target} now embeds a different cluster CA: redistribute it", err=True)
    summary = f"{len(report.actions)} change(s), {report.kept} certificate(s) kept"
    typer.echo(("dry run: " if dry_run else "") + (summary if report.changed else f"no changes, {report.kept} certificate(s) kept")
               + f" in {report.seconds:.1f}s")
