"""Shared CLI plumbing: output format, the clock, JSON printing and progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import typer

from vaultk8s.config import ClusterConfig, load_config
from vaultk8s.durations import parse_duration
from vaultk8s.errors import ConfigError


def vault_gateway(**kwargs: Any) -> Any:
    """VaultGateway.from_env, imported when a command first talks to Vault: `--help` and the
    local commands (certs check, hsm status, policy render) start without hvac and requests."""
    from vaultk8s.vault.gateway import VaultGateway

    return VaultGateway.from_env(**kwargs)


def str_choices(name: str, values) -> type[Enum]:
    """A str Enum of the given values (typer shows and validates choices only from str Enums)."""
    return Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


class Output(str, Enum):
    text = "text"
    json = "json"


ConfigOption = typer.Option(..., "--config", "-c", help="The cluster file (see examples/cluster.yaml).",
                            dir_okay=False)
OutDirOption = typer.Option(..., "--out", "-o", help="Output directory: one folder per node, like /etc/kubernetes.",
                            file_okay=False)
OutputOption = typer.Option(Output.text, "--output", help="Output format.")


def now() -> datetime:
    return datetime.now(timezone.utc)


def load(path: Path) -> ClusterConfig:
    return load_config(path)


def duration_flag(text: str, flag: str) -> timedelta:
    """A Go-style duration given on the command line, or a one-line error naming the flag."""
    try:
        return parse_duration(text)
    except ValueError as err:
        raise ConfigError(f"{flag}: {err}", "command line") from None


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def json_output(output: Output, result: Any) -> bool:
    """With --output json, print result (its to_dict() when it has one) and return True: the
    command prints nothing else."""
    if output is not Output.json:
        return False
    print_json(result.to_dict() if hasattr(result, "to_dict") else result)
    return True


def printed_as_json_or_actions(output: Output, report: Any, dry_run: bool) -> bool:
    """An action report: as JSON (then True: the command prints nothing else), or one line per
    action (then False: the command adds its own notes)."""
    if json_output(output, report):
        return True
    echo_actions(report.actions, dry_run)
    return False


def echo_actions(actions: Iterable[Any], dry_run: bool) -> None:
    """One line per planned or applied action: `would: ...` on a dry run, `did: ...` otherwise."""
    verb = "would" if dry_run else "did"
    for action in actions:
        typer.echo(f"{verb}: {action}")


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[Callable[[str, int], Callable[[], None]]]:
    """A progress factory for ops: (phase, total) -> advance(). Quiet when stderr is no terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = enabled and sys.stderr.isatty()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True, disable=not show) as bars:
        def start(phase: str, total: int) -> Callable[[], None]:
            task = bars.add_task(phase, total=total)
            return lambda: bars.advance(task)

        yield start


def print_table(columns: Sequence[str], rows: Iterable[Sequence[str]], width: int = 200) -> None:
    """Aligned columns without borders on stdout. Rich loads here, with the first table, not at start-up."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None)
    for row in rows:
        table.add_row(*row)
    Console(width=width).print(table)


def command_group() -> typer.Typer:
    """A sub-command group. Plain click help: typer's rich help loads rich, markdown-it and pygments
    (~100 ms) before --help prints a line."""
    return typer.Typer(no_args_is_help=True, rich_markup_mode=None)
