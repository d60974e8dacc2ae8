"""Renew one node's certificates: what the agent does on each wake-up.

Same decisions as bootstrap (missing, mismatched, wrong CA, changed in the catalog), plus a
jittered schedule so a fleet does not renew in lock-step. The node's credential only needs
its own roles' sign paths and the CA certificates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vaultk8s import catalog, crypto
from vaultk8s.plan.schedule import renew_at
from vaultk8s.config import ClusterConfig
from vaultk8s.ops.leaves import CAState, ca_bundle_changes, issue_leaf, leaf_changes, observe_leaf, read_ca_state
from vaultk8s.plan.leaves import reissue_reason
from vaultk8s.plan.resolve import resolve_node
from vaultk8s.store.atomic import FileContent
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway


@dataclass
class RenewalResult:
    renewed: list[str] = field(default_factory=list)  # files written, relative to the node dir
    reasons: dict[str, str] = field(default_factory=dict)
    next_renewals: dict[str, datetime] = field(default_factory=dict)
    expiries: dict[str, datetime] = field(default_factory=dict)
    not_befores: dict[str, datetime] = field(default_factory=dict)
    ca_expiries: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (CA, subject) of each trusted root


def renew_node(config: ClusterConfig, node_name: str, output: NodeOutput, gateway: VaultGateway, *,
               now: datetime, seed: int = 0, force: bool = False, started: datetime | None = None) -> RenewalResult:
    """`seed` is the agent's jitter; `started` when the agent started (spreads a fresh fleet's first renewal)."""
    node = config.node(node_name)
    cas = {ca.name: read_ca_state(gateway, config.mount(ca.name)) for ca in catalog.cas_for(node.control_plane)}
    result = RenewalResult()
    for ca_name, state in cas.items():
        for cert in state.anchors:
            result.ca_expiries[(ca_name, cert.subject.rfc4514_string())] = cert.not_valid_after_utc
    changes: dict[str, FileContent | None] = {}
    for name, content in ca_bundle_changes(node.control_plane, cas, config.mount).items():
        if output.read_pki(name) != content.data:
            changes[name] = content
            result.reasons[name] = "CA bundle changed"
    for rc in resolve_node(node, config):
        if not agent_renews(rc.spec):
            continue
        observed = observe_leaf(output, rc)
        reason = _reason(rc, observed, cas[rc.spec.ca], now, seed, force, started)
        if reason is None:
            _record_schedule(result, rc.cert_file, observed.cert, seed, started)
            continue
        leaf = issue_leaf(gateway, rc)
        changes.update(leaf_changes(leaf))
        result.reasons[rc.cert_file] = reason
        _record_schedule(result, rc.cert_file, crypto.load_certs(leaf.cert_pem)[0], seed, started)
    if changes:
        output.update_pki(changes)
        result.renewed = sorted(f"pki/{name}" for name in changes)
    return result


def agent_renews(spec: catalog.CertSpec) -> bool:
    """Identities for people (admin, super-admin) are not on any node's credential: bootstrap renews them."""
    return catalog.identity_of(spec.name).attach is not None


def _reason(rc, observed, ca: CAState, now: datetime, seed: int, force: bool, started: datetime | None) -> str | None:
    reason = reissue_reason(rc, observed, [ca.issuer] if ca.issuer else [], now, force)
    if reason is None and now >= _renew_at(observed.cert, seed, started):
        return "scheduled renewal"
    return reason


def _rng(cert, seed: int) -> random.Random:
    # Seeded per certificate: the jitter for one certificate is stable across wake-ups.
    return random.Random(cert.serial_number ^ seed)


def _renew_at(cert, seed: int, started: datetime | None) -> datetime:
    return renew_at(cert.not_valid_before_utc, cert.not_valid_after_utc, _rng(cert, seed), started)


def _record_schedule(result: RenewalResult, name: str, cert, seed: int, started: datetime | None) -> None:
    result.next_renewals[name] = _renew_at(cert, seed, started)
    result.expiries[name] = cert.not_valid_after_utc
    result.not_befores[name] = cert.not_valid_before_utc


def node_output(out: Path, node: str, node_dir: Path | None = None) -> NodeOutput:
    """`<out>/<node>` by default; `--node-dir /etc/kubernetes` on a real node."""
    if node_dir is None:
        return NodeOutput(out, node)
    return NodeOutput(Path(node_dir).parent, Path(node_dir).name)
