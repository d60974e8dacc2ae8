"""`vaultk8s agent`: renew this node's certificates, as a sidecar or a system service."""

from __future__ import annotations

import logging
import shlex
import signal
from datetime import timedelta
from pathlib import Path

import typer

from vaultk8s.agent.runner import Agent, AgentSettings
from vaultk8s.cli import common
from vaultk8s.config import parse_duration
from vaultk8s.errors import ConfigError, shown
from vaultk8s.ops.renew import node_output
from vaultk8s.vault.gateway import VaultGateway


def agent(
    config: Path = common.ConfigOption,
    node: str = typer.Option(..., "--node", "-n", help="This node's name in the cluster file."),
    out: Path = typer.Option(None, "--out", "-o", help="Output root: the node's files are in OUT/NODE.", file_okay=False),
    node_dir: Path = typer.Option(None, "--node-dir", help="The node's own directory instead, e.g. /etc/kubernetes.",
                                  file_okay=False),
    credentials: Path = typer.Option(None, "--credentials", help="Directory with role_id and secret_id from "
                                     "`vaultk8s node credentials` (AppRole login each round).", file_okay=False),
    token_file: Path = typer.Option(None, "--token-file", help="A file holding a Vault token (re-read each round)."),
    exec_: list[str] = typer.Option([], "--exec", help="Reload hook run after a renewal, without a shell; "
                                    "gets VAULTK8S_NODE and VAULTK8S_RENEWED. Repeatable."),
    once: bool = typer.Option(False, "--once", help="One round, then exit (non-zero on failure)."),
    force: bool = typer.Option(False, "--force", help="Renew every certificate now (with --once)."),
    idle: str = typer.Option("1h", "--idle", help="Longest sleep between checks of the files."),
    metrics_port: int = typer.Option(0, "--metrics-port", min=0, max=65535,
                                     help="Serve Prometheus metrics on 127.0.0.1:PORT."),
) -> None:
    """Renew this node's certificates when a third of their life remains (minus jitter).

    Without --credentials or --token-file the token comes from VAULT_TOKEN. SIGHUP renews
    everything now; SIGTERM or SIGINT stop between rounds.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s vaultk8s-agent %(levelname)s %(message)s")
    cluster = common.load(config)
    cluster.node(node)
    if (out is None) == (node_dir is None):
        raise ConfigError("give exactly one of --out or --node-dir", "command line")
    try:
        idle_delta = parse_duration(idle)
    except ValueError as err:
        raise ConfigError(f"--idle: {err}", "command line") from None
    settings = AgentSettings(
        config=cluster, node=node, output=node_output(out, node, node_dir), credentials_dir=credentials,
        token_file=token_file, hooks=tuple(_hook(cmd) for cmd in exec_),
        idle=max(idle_delta, timedelta(seconds=10)),
    )
    runner = Agent(settings, connect=VaultGateway.from_env)
    if metrics_port:
        try:
            runner.metrics.serve(metrics_port)
        except OSError as err:
            raise ConfigError(f"--metrics-port {metrics_port}: cannot listen on 127.0.0.1:{metrics_port}: "
                              f"{err.strerror}", "command line") from None
    if once:
        result = runner.renew_once(force=force)
        typer.echo(f"{len(result.reasons)} renewed, {len(result.next_renewals) - len(result.reasons)} kept")
        return
    signal.signal(signal.SIGHUP, lambda *_: runner.renew_now())
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    runner.run()


def _hook(command: str) -> tuple[str, ...]:
    """--exec is split like a shell would, but run without one."""
    try:
        argv = tuple(shlex.split(command))
    except ValueError as err:
        raise ConfigError(f"--exec {shown(command)}: {err}", "command line") from None
    if not argv:
        raise ConfigError("--exec needs a command", "command line")
    return argv
