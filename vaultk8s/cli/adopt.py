"""`vaultk8s adopt`: thin CLI over ops.adopt."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from vaultk8s.cli import common
from vaultk8s.errors import ConfigError


def adopt(
    source: Path = typer.Option(..., "--from", help="The node's kubeadm directory (/etc/kubernetes).",
                                file_okay=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", dir_okay=False,
                                          help="The cluster file that describes this cluster."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print a cluster file derived from the directory; touch nothing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; touch nothing."),
    remove_ca_keys: bool = typer.Option(False, "--remove-ca-keys",
                                        help="Delete the three CA key files once Vault holds the same keys."),
    backup: Optional[Path] = typer.Option(None, "--backup", dir_okay=False,
                                          help="Where the 0600 tar of the directory before adoption goes "
                                               "(default: beside it, <dir>.before-vaultk8s.tar)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Import a kubeadm cluster's CAs and service-account key into Vault, keeping every existing
    certificate, kubeconfig and token valid. Then `vaultk8s bootstrap --out` rewrites the directory
    in place (docs/adopt.md). Reads VAULT_ADDR, VAULT_TOKEN, VAULT_CACERT (or BAO_*)."""
    from vaultk8s.ops import adopt as ops

    if print_config:
        typer.echo(ops.derived_config(source), nl=False)
        return
    if config is None:
        raise ConfigError("--config is required (or --print-config to derive one)", "command line")
    cluster = common.load(config)
    report = ops.adopt(cluster, source, common.vault_gateway, now=common.now(), dry_run=dry_run,
                       remove_ca_keys=remove_ca_keys, backup=backup)
    if common.printed_as_json_or_actions(output, report, dry_run):
        return
    if remove_ca_keys and not dry_run:
        typer.echo(f"WARNING: {report.backup} still holds the CA keys: move it off the node", err=True)
    summary = f"{len(report.actions)} change(s)" if report.changed else "no changes"
    typer.echo(("dry run: " if dry_run else "") + f"node {report.node}: {summary}")
