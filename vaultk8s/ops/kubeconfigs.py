"""Write each node's kubeconfigs from catalog.KUBECONFIGS after its pki/ is in place.

The CA and embedded credentials are read back from the node's pki/, so a kubeconfig always
matches the ca.crt and cert files beside it.
"""

from __future__ import annotations

from pathlib import Path

from vaultk8s.config import ClusterConfig, NodeSpec
from vaultk8s.errors import StoreError
from vaultk8s.plan.actions import Action
from vaultk8s.plan.kubeconfig import (CA_FILE, ResolvedKubeconfig, kubeconfig_drift, render_document,
                                      render_kubeconfig, resolve_node_kubeconfigs)
from vaultk8s.store.atomic import KEY_MODE, secret
from vaultk8s.store.layout import NodeOutput


def ensure_kubeconfigs(config: ClusterConfig, out: Path, *, dry_run: bool = False) -> list[Action]:
    return [a for node in config.nodes for a in ensure_node_kubeconfigs(node, config, out, dry_run=dry_run)]


def ensure_node_kubeconfigs(node: NodeSpec, config: ClusterConfig, out: Path, *, dry_run: bool = False,
                            output: NodeOutput | None = None, skip_missing: bool = False) -> list[Action]:
    """skip_missing (the agent): a kubeconfig whose embedded credential is not on the node, such
    as admin.conf on a control-plane node the agent set up alone, is the operator's to write."""
    output = output or NodeOutput(out, node.name)
    ca_pem = output.read_pki(CA_FILE)
    actions = []
    for rk in resolve_node_kubeconfigs(node, config):
        target = f"{node.name}/{rk.file}"
        creds = _credentials(output, rk)
        if ca_pem is not None and creds is None and skip_missing:
            continue
        if ca_pem is None or creds is None:
            if dry_run:  # the pki/ files appear when the plan is applied
                actions.append(Action("write-file", target, "missing"))
                continue
            raise _missing(output, rk, ca_pem)
        reason = kubeconfig_drift(render_document(rk, ca_pem, *creds), output.read_file(rk.file))
        if reason is None and _mode(output.root / rk.file) != KEY_MODE:
            reason = "permissions not 0600"
        if reason is None:
            continue
        actions.append(Action("write-file", target, reason))
        if not dry_run:
            output.write_file(rk.file, secret(render_kubeconfig(rk, ca_pem, *creds)))
    return actions


def _credentials(output: NodeOutput, rk: ResolvedKubeconfig) -> tuple[bytes | None, bytes | None] | None:
    if not rk.embed:
        return (None, None)
    cert, key = output.read_pki(rk.cert_file), output.read_pki(rk.key_file)
    return (cert, key) if cert and key else None


def _missing(output: NodeOutput, rk: ResolvedKubeconfig, ca_pem: bytes | None) -> StoreError:
    what = CA_FILE if ca_pem is None else f"{rk.cert_file}/{rk.key_file}"
    return StoreError(f"cannot write {output.root}/{rk.file}: pki/{what} is missing")


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
