"""Is a node's set of certificates fit to serve? The agent's /healthz and systemd watchdog ask this."""

from __future__ import annotations

from datetime import datetime

from vaultk8s.config import ClusterConfig
from vaultk8s.ops.leaves import observe_leaf
from vaultk8s.ops.renew import agent_renews
from vaultk8s.plan.leaves import leaf_health
from vaultk8s.plan.resolve import resolve_node
from vaultk8s.store.layout import NodeOutput


def node_health(config: ClusterConfig, node: str, output: NodeOutput, now: datetime) -> str | None:
    """None when every certificate the agent owns is valid and outside its last tenth; else one line why."""
    problems = []
    for rc in resolve_node(config.node(node), config):
        if agent_renews(rc.spec):
            reason = leaf_health(observe_leaf(output, rc), now)
            if reason:
                problems.append(f"pki/{rc.cert_file} {reason}")
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more
