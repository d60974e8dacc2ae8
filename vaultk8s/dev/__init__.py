"""The embedded OpenBao for development and tests (`vaultk8s dev ...`)."""

from vaultk8s.dev.server import DevServer, DevStatus, NodeStatus, VaultEnv, find_bao, render_config

__all__ = ["DevServer", "DevStatus", "NodeStatus", "VaultEnv", "find_bao", "render_config"]
