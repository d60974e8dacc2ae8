"""`vaultk8s node ...`: thin CLI over ops.node. Secrets go to 0600 files, never to stdout."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vaultk8s.cli import common

if TYPE_CHECKING:  # the operations load with the command that runs them, not at start-up
    from vaultk8s.ops import node as ops

app = common.command_group()

NodeOption = typer.Option(..., "--node", "-n", help="Node name as in the cluster file.")


@app.command("credentials")
def credentials(
    config: Path = common.ConfigOption,
    node: str = NodeOption,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for role_id and secret_id (0600).", file_okay=False),
    wrap_ttl: str = typer.Option("", "--wrap-ttl", help="Write a response-wrapped secret_id (secret_id.wrapped), e.g. 10m."),
    token: bool = typer.Option(False, "--token", help="Also write a plain token file with the node's policies and limits."),
    output: common.Output = common.OutputOption,
) -> None:
    """Write the node's AppRole role_id and a new secret_id (and optionally a token) as 0600 files.

    The secret_id is the node's enrolment credential (policy.secret_id_ttl, default 24h): the agent
    uses it for one round, then logs in with the node's certificate and destroys it (docs/identity.md).
    A secret_id the directory held for this node is destroyed once the new one is written.
    """
    from vaultk8s.ops import node as ops

    wrap_seconds = int(common.duration_flag(wrap_ttl, "--wrap-ttl").total_seconds()) if wrap_ttl else None
    cluster = common.load(config)
    cluster.node(node)  # an unknown node fails before any Vault call
    report = ops.write_credentials(cluster, node, out, common.vault_gateway(),
                                   wrap_ttl_seconds=wrap_seconds, token=token)
    print_credentials(report, output)


def print_credentials(report: ops.CredentialsReport, output: common.Output) -> None:
    """The files written (as JSON with --output json); their contents never go to stdout."""
    from vaultk8s.ops.node import PREVIOUS_DESTROYED

    for warning in report.warnings:
        typer.echo(f"warning: {warning}", err=True)
    if not common.json_output(output, report):
        for path in report.files:
            typer.echo(f"wrote {path} (0600)")
        if report.previous_secret_id == PREVIOUS_DESTROYED:
            typer.echo("destroyed the secret_id the directory held before")


@app.command("revoke")
def revoke(
    config: Path = common.ConfigOption,
    node: str = NodeOption,
    keep_tokens: bool = typer.Option(False, "--keep-tokens", help="Only destroy secret_ids; live tokens run out by TTL."),
    output: common.Output = common.OutputOption,
) -> None:
    """Destroy the node's secret_ids and certificate login and (default) delete its identity so its live
    tokens stop working. It stays revoked through later `policy apply` runs until `--readmit`."""
    from vaultk8s.ops import node as ops

    cluster = common.load(config)
    cluster.node(node)
    report = ops.revoke(cluster, node, common.vault_gateway(), tokens=not keep_tokens)
    if not common.json_output(output, report):
        typer.echo(f"node {report.node}: {report.secret_ids_destroyed} secret_id(s) destroyed"
                   + (", certificate login deleted" if report.cert_entry_deleted else "")
                   + (", identity deleted (its tokens no longer work)" if report.entity_deleted else "")
                   + f"; `vaultk8s policy apply --readmit {report.node}` admits it again")
