"""`vaultk8s signer` (the CSR signer controller) and `vaultk8s signer-credentials`."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import uuid
from pathlib import Path

import typer

from vaultk8s.cli import common
from vaultk8s.cli.node import print_credentials
from vaultk8s.errors import ConfigError, VaultK8sError
from vaultk8s.ops.defaults import DEFAULT_SIGNER_WORKERS


def signer(
    config: Path = common.ConfigOption,
    kubeconfig: Path = typer.Option(None, "--kubeconfig", help="Kubeconfig of the signer's identity; without it the "
                                    "pod's service account (in-cluster config).", dir_okay=False),
    approve_serving: bool = typer.Option(False, "--approve-serving", help="Also approve kubelet-serving CSRs that "
                                         "pass every check (nothing else approves them in these clusters)."),
    metrics_addr: str = typer.Option("", "--metrics-addr", help="Serve /healthz and /metrics on HOST:PORT."),
    credentials: Path = typer.Option(None, "--credentials", help="Directory with role_id and secret_id from "
                                     "`vaultk8s signer-credentials` (AppRole login), one per replica. The signer "
                                     "replaces the secret_id at 2/3 of its life, so keep it writable.",
                                     file_okay=False),
    token_file: Path = typer.Option(None, "--token-file", help="A file holding a Vault token (re-read on each login)."),
    jwt_file: Path = typer.Option(None, "--jwt-file", help="The projected ServiceAccount token (audience vaultk8s), "
                                  "re-read on each login at auth/<prefix>jwt, role csr-signer.", dir_okay=False),
    lease_namespace: str = typer.Option("kube-system", "--lease-namespace", help="Namespace of the leader-election Lease."),
    lease_name: str = typer.Option("vaultk8s-signer", "--lease-name", help="Name of the leader-election Lease."),
    identity: str = typer.Option("", "--identity", help="This replica's name in the Lease (default: host name + random)."),
    resync: str = typer.Option("5m", "--resync", help="Re-list every CSR this often (the watch covers the rest)."),
    workers: int = typer.Option(DEFAULT_SIGNER_WORKERS, "--workers", min=1, max=64,
                                help="CSRs of a list (start-up, resync, a backlog) handled at once."),
) -> None:
    """Sign approved kubelet CSRs (kube-apiserver-client-kubelet, kubelet-serving) with each node's own Vault role.

    Checks each CSR first (requester, CN/O, node in the cluster file, SANs, usages, key type) and
    sets a Failed condition with the reason when one fails. Runs as one leader among replicas
    (a coordination.k8s.io Lease). Vault comes from VAULT_ADDR/VAULT_CACERT; the token from
    --jwt-file (in the cluster), --credentials (AppRole, outside it), --token-file or VAULT_TOKEN;
    it logs in again at 2/3 of each token's lease, and on AppRole replaces its own secret_id at 2/3
    of its life. SIGTERM or SIGINT stop it and release the lease.
    """
    # Imported here: the kubernetes client is heavy and only this command needs it.
    from vaultk8s.signer import kube
    from vaultk8s.signer.controller import Signer, SignerSettings, VaultSigner, run_until_stopped
    from vaultk8s.signer.leader import LeaseElector
    from vaultk8s.signer.metrics import SignerMetrics
    from vaultk8s.ops import node as ops
    from vaultk8s.serve import HealthServer, parse_listen_addr

    logging.basicConfig(level=logging.INFO, format="%(asctime)s vaultk8s-signer %(levelname)s %(message)s")
    cluster = common.load(config)
    resync_seconds = max(30, int(common.duration_flag(resync, "--resync").total_seconds()))
    addr = parse_listen_addr(metrics_addr) if metrics_addr else None
    if sum(x is not None for x in (credentials, token_file, jwt_file)) > 1:
        raise ConfigError("give at most one of --jwt-file, --credentials or --token-file", "command line")
    if credentials is not None and not (credentials / ops.ROLE_ID_FILE).is_file():
        raise ConfigError(f"--credentials {credentials} holds no role_id: run `vaultk8s signer-credentials`",
                          "command line")
    if jwt_file is not None and not jwt_file.is_file():
        raise ConfigError(f"--jwt-file {jwt_file} does not exist: mount the projected ServiceAccount token "
                          "(deploy/signer/signer.yaml)", "command line")
    common.vault_gateway()  # VAULT_ADDR missing: fail now, not at the first CSR
    if credentials is not None and not os.access(credentials, os.W_OK):
        logging.getLogger("vaultk8s.signer").warning(
            "--credentials %s is not writable: the signer cannot replace its secret_id, which then lapses after "
            "policy.secret_id_ttl", credentials)
    settings = SignerSettings(config=cluster, approve_serving=approve_serving, credentials_dir=credentials,
                              token_file=token_file, jwt_file=jwt_file, resync_seconds=resync_seconds,
                              workers=workers)
    gateway = kube.KubeGateway(kube.connect(kubeconfig))
    elector = LeaseElector(gateway, lease_namespace, lease_name,
                           identity or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    metrics = SignerMetrics()
    vault = VaultSigner(common.vault_gateway, settings, metrics=metrics)
    runner = Signer(settings, gateway, vault, elector, metrics=metrics)
    health = None
    if addr is not None:
        def alive() -> str | None:
            return None if runner.heartbeat.alive() else "the signer loop has not run for too long"

        health = HealthServer(addr[0], addr[1], runner.metrics.registry, liveness=alive, readiness=alive).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ended = run_until_stopped(runner, elector, stop, keep_logged_in=vault if credentials is not None else None)
    vault.close()
    if health is not None:
        health.stop()
    if ended is not None:
        raise VaultK8sError(f"the {ended} loop stopped unexpectedly (see the log above); restarting the signer is safe")


def signer_credentials(
    config: Path = common.ConfigOption,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for role_id and secret_id (0600).", file_okay=False),
    wrap_ttl: str = typer.Option("", "--wrap-ttl", help="Write a response-wrapped secret_id (secret_id.wrapped), e.g. 10m."),
    output: common.Output = common.OutputOption,
) -> None:
    """Write the CSR signer's AppRole role_id and a new secret_id as 0600 files (for `signer --credentials`).

    A secret_id the directory held for this role is destroyed once the new one is written.
    """
    from vaultk8s.ops import node as ops

    wrap_seconds = int(common.duration_flag(wrap_ttl, "--wrap-ttl").total_seconds()) if wrap_ttl else None
    report = ops.write_signer_credentials(common.load(config), out, common.vault_gateway(),
                                          wrap_ttl_seconds=wrap_seconds)
    print_credentials(report, output)
