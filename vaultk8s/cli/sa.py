"""`vaultk8s sa ...`: thin CLI over ops.sa (service-account key rotation and status)."""

from __future__ import annotations

from pathlib import Path

import typer

from vaultk8s.cli import common
from vaultk8s.durations import days_hours
from vaultk8s.plan.phases import SARotationPhase

app = common.command_group()


PhaseOption = common.str_choices("PhaseOption", [p.value for p in SARotationPhase])


@app.command("rotate")
def rotate(
    config: Path = common.ConfigOption,
    out: Path = common.OutDirOption,
    phase: PhaseOption = typer.Option(..., "--phase", help="stage: add a verification key; promote: sign with it; "
                                                          "retire: drop old keys after the grace period."),
    force: bool = typer.Option(False, "--force", help="retire before the grace period ends (breaks tokens the old key signed)."),
    output: common.Output = common.OutputOption,
) -> None:
    """One phase of a service-account key rotation; idempotent, refuses out-of-order steps.

    Updates the key set in Vault KV (check-and-set), then sa.key and sa.pub in every control-plane
    node's pki/. Restart kube-apiserver and kube-controller-manager to load them.
    """
    from vaultk8s.ops import sa as sa_ops

    cluster = common.load(config)
    report = sa_ops.rotate(cluster, out, common.vault_gateway(), SARotationPhase(phase.value), now=common.now(),
                           force=force)
    if common.printed_as_json_or_actions(output, report, dry_run=False):
        return
    if not report.changed:
        typer.echo(f"{phase.value}: already done, key set unchanged (KV version {report.kv_version})")


@app.command("status")
def status(
    config: Path = common.ConfigOption,
    output: common.Output = common.OutputOption,
) -> None:
    """The service-account keys in Vault: state, age, and when a previous key may be retired."""
    from vaultk8s.ops import sa as sa_ops

    cluster = common.load(config)
    result = sa_ops.status(cluster, common.vault_gateway(), now=common.now())
    if common.json_output(output, result):
        return
    common.print_table(("KEY ID", "TYPE", "STATE", "SINCE", "AGE", "RETIRE AFTER"),
                       [(k.id[:16], k.key_type, k.state, k.since.strftime("%Y-%m-%d %H:%M UTC"), days_hours(k.age_seconds),
                         k.retire_after.strftime("%Y-%m-%d %H:%M UTC") if k.retire_after else "-") for k in result.keys])
    typer.echo(f"{result.kv_path} (KV version {result.kv_version}), grace period {result.grace_period}; "
               f"next: {result.next_step}")
