"""`vaultk8s policy ...`: thin CLI over ops.policy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from vaultk8s.cli import common

if TYPE_CHECKING:  # the operations load with the command that runs them, not at start-up
    from vaultk8s.ops import policy as ops
    from vaultk8s.plan.review import Review

app = common.command_group()

DirOption = typer.Option(Path("policies"), "--dir", help="Directory of the reviewed policy files.", file_okay=False)


ReviewOutput = common.str_choices("ReviewOutput", ["text", "json", "markdown"])


@app.command("render")
def render(config: Path = common.ConfigOption, directory: Path = DirOption) -> None:
    """Regenerate policies/*.hcl from the catalog and the cluster file (commit the result)."""
    from vaultk8s.ops import policy as ops

    changed = ops.render_to_dir(common.load(config), directory)
    typer.echo(f"{len(changed)} file(s) changed in {directory}" + (": " + ", ".join(changed) if changed else ""))


@app.command("apply")
def apply(
    config: Path = common.ConfigOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would change; touch nothing."),
    readmit: list[str] = typer.Option([], "--readmit", help="Admit a node `node revoke` revoked again, with a new "
                                      "identity (repeatable)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Write the policies, the AppRole and cert auth mounts, and per node its AppRole role, token role,
    certificate login and identity.

    Deletes the AppRole role, cert entry, token role and identity of nodes no longer in the cluster
    file (only this cluster's: see docs/policies.md). Revoked nodes stay out unless --readmit names them.

    Needs an admin token: writing policies and identities is what grants everything else.
    """
    from vaultk8s.ops import policy as ops

    report = ops.apply(common.load(config), common.vault_gateway(), dry_run=dry_run, readmit=tuple(readmit))
    _print_report(report, output, "would" if dry_run else "did")


@app.command("diff")
def diff(config: Path = common.ConfigOption, output: common.Output = common.OutputOption) -> None:
    """Show drift between the rendered policies/auth roles and Vault. Exits 1 on drift."""
    from vaultk8s.ops import policy as ops

    report = ops.apply(common.load(config), common.vault_gateway(), dry_run=True)
    _print_report(report, output, "drift")
    if report.changed:
        raise typer.Exit(1)


def _print_report(report: ops.PolicyReport, output: common.Output, verb: str) -> None:
    if common.json_output(output, report):
        return
    for text in report.diffs:
        typer.echo(text, nl=False)
    for action in report.actions:
        typer.echo(f"{verb}: {action}")
    for note in report.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"{len(report.actions)} change(s)" if report.changed else "no changes: Vault matches policies/")


@app.command("review")
def review(
    config: Path = common.ConfigOption,
    output: ReviewOutput = typer.Option(ReviewOutput.text, "--output", help="Output format."),
    offline: bool = typer.Option(False, "--offline", help="Lint files (--dir) and desired roles; no Vault."),
    directory: Path = DirOption,
) -> None:
    """Who can obtain which certificate, from which CA, for how long; lint findings. Exits 1 on any high finding.

    Online (default) it reads the policies and roles as they are in Vault (an auditor token suffices).
    """
    from vaultk8s.ops import policy as ops

    cluster = common.load(config)
    result = ops.review_offline(cluster, directory) if offline else ops.review_vault(cluster, common.vault_gateway())
    if output is ReviewOutput.json:
        common.print_json(result.to_dict())
    elif output is ReviewOutput.markdown:
        typer.echo(render_markdown(result), nl=False)
    else:
        _print_text(result)
    if result.high:
        raise typer.Exit(1)


_COLUMNS = ("identity", "mount", "role", "common_name", "organization", "sans", "ekus", "max_ttl")


def _print_text(result: Review) -> None:
    common.print_table([c.upper() for c in _COLUMNS], [[getattr(row, c) for c in _COLUMNS] for row in result.rows], 240)
    common.print_table(("SEVERITY", "IDENTITY", "SUBJECT", "FINDING"),
                       [(f.severity, f.identity, f.subject, f.message) for f in result.findings], 240)
    typer.echo(f"{len(result.high)} high finding(s)")


def render_markdown(result: Review) -> str:
    lines = ["## Effective permissions", "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_md(getattr(r, c)) for c in _COLUMNS) + " |" for r in result.rows]
    lines += ["", "## Findings", "", "| severity | identity | subject | finding |", "|---|---|---|---|"]
    lines += [f"| {f.severity} | {_md(f.identity)} | {_md(f.subject)} | {_md(f.message)} |" for f in result.findings]
    lines += ["", f"**{len(result.high)} high finding(s)**", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`" if text and text != "-" else text
