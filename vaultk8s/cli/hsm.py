"""`vaultk8s hsm`: inspect the root keys in the PKCS#11 token, create a SoftHSM dev token."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from vaultk8s import catalog
from vaultk8s.cli import common
from vaultk8s.cli.common import Output
from vaultk8s.config import load_config
from vaultk8s.errors import ConfigError

app = common.command_group()


@app.command()
def status(
    config: Path = typer.Option(..., "--config", help="cluster file with an hsm: block"),
    output: Output = typer.Option(Output.text, "--output", help="text or json"),
) -> None:
    """Report, per CA, the root key's attributes and the root certificate in the token."""
    from vaultk8s.hsm import HsmRootAuthority, open_token

    cluster = _load_cluster(config)
    with open_token(cluster.hsm) as session:
        report = HsmRootAuthority(session, cluster.hsm.key_type, scope=cluster.hsm_scope).status(
            tuple(ca.name for ca in catalog.CAS))
    if output is Output.json:
        typer.echo(json.dumps([entry.to_dict() for entry in report], indent=2))
        return
    for entry in report:
        typer.echo(_render_text(entry))


@app.command("init-dev")
def init_dev(
    state_dir: Path = typer.Option(Path(".vaultk8s"), "--state-dir", help="where the token lives"),
) -> None:
    """Create (or reuse) a SoftHSM2 token for development and print the exports to use it."""
    from vaultk8s.hsm import init_dev_token

    typer.echo(dev_token_exports(init_dev_token(state_dir)), nl=False)


def dev_token_exports(token) -> str:
    """Export lines for a dev token; the PIN is read from its 0600 file by the shell, never echoed."""
    return (f"export SOFTHSM2_CONF={shlex.quote(str(token.conf_path.resolve()))}\n"
            f"export VAULTK8S_HSM_PIN=\"$(cat {shlex.quote(str(token.pin_file.resolve()))})\"\n")


def _load_cluster(config: Path):
    cluster = load_config(config)
    if cluster.hsm is None:
        raise ConfigError("no hsm: block; see docs/hsm.md", source=str(config))
    return cluster


def _render_text(entry) -> str:
    if not entry.key_found and not entry.cert_found:
        return f"{entry.ca_name}: missing (no key, no certificate; CKA_ID {entry.key_id})"
    key = (f"key {entry.key_type} sensitive={entry.sensitive} extractable={entry.extractable} "
           f"always_sensitive={entry.always_sensitive} "
           f"never_extractable={entry.never_extractable}" if entry.key_found else "key MISSING")
    cert = (f"cert {entry.subject} not_after={entry.not_after.isoformat()} "
            f"sha256={entry.sha256_fingerprint}" if entry.cert_found else "cert MISSING")
    return f"{entry.ca_name}: {key}; {cert}"
