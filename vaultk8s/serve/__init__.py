"""What every long-running vaultk8s process shares: one health/metrics HTTP listener and systemd notify.

The agent uses it today; a new daemon (e.g. a CSR signer) gets /healthz, /readyz and /metrics by
passing its own registry and two checks, each returning None (healthy) or a one-line reason.
"""

from vaultk8s.serve.checks import Check
from vaultk8s.serve.http import HealthServer, parse_listen_addr
from vaultk8s.serve.systemd import Notifier, Watchdog

__all__ = ["Check", "HealthServer", "Notifier", "Watchdog", "parse_listen_addr"]
