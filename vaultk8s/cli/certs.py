"""`vaultk8s certs ...`: thin CLI over ops.check."""

from __future__ import annotations

from pathlib import Path

import typer

from vaultk8s.cli import common
from vaultk8s.durations import days_hours

app = common.command_group()


@app.command("check")
def check(
    out: Path = common.OutDirOption,
    output: common.Output = common.OutputOption,
) -> None:
    """Every certificate under OUT with its expiry, residual time, CA and problems.

    Exits 1 when any certificate is expired, has the wrong CA, or a missing or mismatched key.
    """
    from vaultk8s.ops.check import check_out_dir

    rows = check_out_dir(out, common.now())
    bad = [r for r in rows if r.problems]
    if output is common.Output.json:
        common.print_json({"certificates": [r.to_dict() for r in rows], "problems": len(bad)})
    else:
        common.print_table(("NODE", "CERTIFICATE", "EXPIRES", "RESIDUAL", "CA", "STATUS"),
                           [(r.node, r.file, r.not_after.strftime("%Y-%m-%d %H:%M UTC") if r.not_after else "-",
                             days_hours(r.residual_seconds), r.ca,
                             ", ".join(r.problems) or ("renewal due" if r.renewal_due else "ok")) for r in rows])
    if bad:
        raise typer.Exit(1)
