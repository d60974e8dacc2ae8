"""`vaultk8s status`: thin CLI over ops.status (every lifetime of the cluster, soonest first)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vaultk8s.cli import common
from vaultk8s.durations import days_hours

if TYPE_CHECKING:  # the operations load with the command that runs them, not at start-up
    from vaultk8s.plan.status import StatusReport


def status(
    config: Path = common.ConfigOption,
    out: Path = typer.Option(None, "--out", "-o", help="Also list the leaves on disk under this output directory.",
                             file_okay=False),
    warn: str = typer.Option("720h", "--warn", help="Due when a person must renew it within this long (default 30 days)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Everything of the cluster that expires, soonest first; exit 1 naming what is due.

    Leaves (under --out), every CA issuer of every rotation generation, service-account keys by
    age, enrolment and signer secret_ids, and the tokens carrying this cluster's policies (when the
    token may list them). Due: automatic renewals past their renewal point, anything a person
    renews lapsing within --warn, a previous service-account key past its retire time.
    """
    from vaultk8s.ops import status as ops

    window = common.duration_flag(warn, "--warn")
    report = ops.status(common.load(config), common.vault_gateway(), now=common.now(), warn=window, out=out)
    if not common.json_output(output, report):
        _print_text(report)
    if report.due_items:
        names = ", ".join(i.name for i in report.due_items)
        typer.echo(f"due: {len(report.due_items)} item(s): {names}", err=True)
        raise typer.Exit(1)


def _print_text(report: StatusReport) -> None:
    from vaultk8s.plan.status import rfc3339

    now = common.now()
    common.print_table(("KIND", "NAME", "NOT AFTER", "LEFT", "DUE", "RENEWED BY"),
                       [(item.kind, item.name, rfc3339(item.not_after) or "never",
                         days_hours(int((item.not_after - now).total_seconds())) if item.not_after else "-",
                         "DUE" if due else "", item.renewed_by) for item, due in zip(report.items, report.due)], 220)
    for note in report.notes:
        typer.echo(f"note: {note}")
