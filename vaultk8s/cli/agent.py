"""`vaultk8s agent`: renew this node's certificates, as a sidecar or a system service."""

from __future__ import annotations

import logging
import shlex
import signal
from datetime import timedelta
from pathlib import Path

import typer

from vaultk8s.cli import common
from vaultk8s.errors import ConfigError, shown

# The runner (prometheus-client) and the HTTP server are imported by the command itself, so every
# other command starts without them.


def agent(
    config: Path = common.ConfigOption,
    node: str = typer.Option(..., "--node", "-n", help="This node's name in the cluster file."),
    out: Path = typer.Option(None, "--out", "-o", help="Output root: the node's files are in OUT/NODE.", file_okay=False),
    node_dir: Path = typer.Option(None, "--node-dir", help="The node's own directory instead, e.g. /etc/kubernetes.",
                                  file_okay=False),
    credentials: Path = typer.Option(None, "--credentials", help="Directory from `vaultk8s node credentials`: "
                                     "its secret_id enrols the node once (then destroyed); every later round logs "
                                     "in with the node's own kubelet-client certificate.", file_okay=False),
    token_file: Path = typer.Option(None, "--token-file", help="A file holding a Vault token (re-read each round)."),
    exec_: list[str] = typer.Option([], "--exec", help="Reload hook run after a renewal, without a shell; "
                                    "gets VAULTK8S_NODE and VAULTK8S_RENEWED. Repeatable."),
    pid_file: Path = typer.Option(None, "--pid-file", help="Reload by signalling the process whose pid this file "
                                  "holds (re-read each time), after any --exec hooks.", dir_okay=False),
    reload_signal: str = typer.Option(None, "--reload-signal", help="The signal sent to --pid-file's process "
                                      "(default HUP), e.g. HUP, USR1."),
    once: bool = typer.Option(False, "--once", help="One round, then exit (non-zero on failure)."),
    force: bool = typer.Option(False, "--force", help="Renew every certificate now (with --once)."),
    idle: str = typer.Option("1h", "--idle", help="Longest sleep between checks of the files."),
    metrics_addr: str = typer.Option(None, "--metrics-addr", help="Serve /healthz, /readyz and /metrics on "
                                     "HOST:PORT (e.g. 0.0.0.0:9469 to be scraped from outside the pod)."),
    metrics_port: int = typer.Option(None, "--metrics-port", help="The same on 127.0.0.1:PORT."),
) -> None:
    """Renew this node's certificates when a third of their life remains (minus jitter).

    Without --credentials or --token-file the token comes from VAULT_TOKEN. SIGHUP renews
    everything now; SIGTERM or SIGINT stop between rounds. Under systemd (NOTIFY_SOCKET set) it
    reports READY=1 after the first good round and pings WATCHDOG=1 while /healthz would be 200.
    """
    from vaultk8s.agent.runner import Agent, AgentSettings
    from vaultk8s.ops.renew import node_output
    from vaultk8s.serve import HealthServer, Notifier, Watchdog

    logging.basicConfig(level=logging.INFO, format="%(asctime)s vaultk8s-agent %(levelname)s %(message)s")
    cluster = common.load(config)
    cluster.node(node)
    if (out is None) == (node_dir is None):
        raise ConfigError("give exactly one of --out or --node-dir", "command line")
    idle_delta = common.duration_flag(idle, "--idle")
    settings = AgentSettings(
        config=cluster, node=node, output=node_output(out, node, node_dir), credentials_dir=credentials,
        token_file=token_file, hooks=_hooks(exec_, pid_file, reload_signal),
        idle=max(idle_delta, timedelta(seconds=10)),
    )
    listen = _listen_addr(metrics_addr, metrics_port)
    notifier = Notifier()
    runner = Agent(settings, connect=common.vault_gateway,
                   on_ready=lambda: notifier.ready(f"certificates of {node} in place"))
    if listen:
        HealthServer(*listen, runner.metrics.registry, liveness=runner.health, readiness=runner.readiness).start()
    if once:
        result = runner.renew_once(force=force)
        typer.echo(f"{len(result.reasons)} renewed, {len(result.next_renewals) - len(result.reasons)} kept")
        return
    signal.signal(signal.SIGHUP, lambda *_: runner.renew_now())
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    watchdog = Watchdog(notifier, runner.health)
    watchdog.start()
    try:
        runner.run()
    finally:
        watchdog.stop()
        notifier.send("STOPPING=1")


def _hooks(exec_: list[str], pid_file: Path | None, reload_signal: str | None) -> tuple:
    from vaultk8s.agent.reload import ExecHook, SignalHook, parse_signal

    hooks: list = []
    for cmd in exec_:
        try:
            argv = tuple(shlex.split(cmd))
        except ValueError as err:
            raise ConfigError(f"--exec {shown(cmd)}: {err}", "command line") from None
        if not argv:
            raise ConfigError("--exec: empty command", "command line")
        hooks.append(ExecHook(argv))
    if reload_signal is not None and pid_file is None:
        raise ConfigError("--reload-signal needs --pid-file (the process to signal)", "command line")
    if pid_file is not None:
        hooks.append(SignalHook(parse_signal(reload_signal or "HUP"), pid_file))
    return tuple(hooks)


def _listen_addr(metrics_addr: str | None, metrics_port: int | None) -> tuple[str, int] | None:
    from vaultk8s.serve.http import check_port, parse_listen_addr

    if metrics_addr is not None and metrics_port is not None:
        raise ConfigError("give --metrics-addr or --metrics-port, not both", "command line")
    if metrics_addr is not None:
        return parse_listen_addr(metrics_addr)
    if metrics_port is not None:
        return "127.0.0.1", check_port(metrics_port)
    return None
