"""`vaultk8s ca ...`: thin CLI over ops.ca_rotation (CA rotation phases and status)."""

from __future__ import annotations

from pathlib import Path

import typer

from vaultk8s import catalog
from vaultk8s.cli import common
from vaultk8s.plan.phases import CARotationPhase

app = common.command_group()

CAOption = common.str_choices("CAOption", [c.name for c in catalog.CAS])
PhaseOption = common.str_choices("PhaseOption", [p.value for p in CARotationPhase])


@app.command("rotate")
def rotate(
    config: Path = common.ConfigOption,
    out: Path = common.OutDirOption,
    ca: CAOption = typer.Option(..., "--ca", help="The CA to rotate."),
    phase: PhaseOption = typer.Option(..., "--phase", help="stage: new root, trusted beside the old one; switch: the "
                                                          "new root signs, leaves re-issued; retire: drop the old root."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; touch nothing."),
    force: bool = typer.Option(False, "--force", help="retire although leaves under --out still chain to the old root "
                                                     "(they stop being trusted)."),
    output: common.Output = common.OutputOption,
) -> None:
    """One phase of a CA rotation without downtime; idempotent, refuses out-of-order steps.

    State is kept in the mount's issuers. Restart what does not reload its CA files after stage and
    retire (etcd members, one at a time): see docs/ca-rotation.md.
    """
    from vaultk8s.ops import ca_rotation as ops

    cluster = common.load(config)
    report = ops.rotate(cluster, out, common.vault_gateway(), ca.value, CARotationPhase(phase.value), now=common.now(),
                        dry_run=dry_run, force=force)
    if common.printed_as_json_or_actions(output, report, dry_run):
        return
    for note in report.notes:
        typer.echo(f"NOTE: {note}", err=True)
    for target in report.stranded:
        typer.echo(f"WARNING: {target} still chains to the retired root and is no longer trusted", err=True)
    if not report.changed:
        typer.echo(f"{ca.value} {phase.value}: already done ({report.state_after})")
    else:
        typer.echo(f"{ca.value}: {report.state_before} -> {report.state_after}")


@app.command("status")
def status(
    config: Path = common.ConfigOption,
    out: Path = common.OutDirOption,
    output: common.Output = common.OutputOption,
) -> None:
    """Each CA's rotation state, its issuers, and how many leaves under --out each one signed."""
    from vaultk8s.ops import ca_rotation as ops

    cluster = common.load(config)
    result = ops.status(cluster, out, common.vault_gateway())
    if common.json_output(output, result):
        return
    for ca in result:
        typer.echo(f"{ca['ca']} ({ca['mount']}): {ca['state']}; next: {ca['next']}")
        common.print_table(("ISSUER", "ROLE", "DEFAULT", "ISSUING", "NOT AFTER", "LEAVES"),
                           [(i["name"] or i["id"], i["role"], "yes" if i["default"] else "", "yes" if i["issuing"] else "no",
                             i["not_after"][:16].replace("T", " "), str(i["leaves"])) for i in ca["issuers"]])
