"""`vaultk8s --help` and the local commands start without the Vault client stack (bench/README.md,
start-up): hvac, requests and the embedded server load with the first command that talks to Vault,
and the operations (with cryptography and PyJWT) with the command that runs them."""

from __future__ import annotations

import subprocess
import sys

NOT_AT_START = ("hvac", "requests", "urllib3", "prometheus_client", "kubernetes", "pkcs11", "vaultk8s.vault.gateway",
                "vaultk8s.dev.server", "cryptography", "jwt", "vaultk8s.ops.bootstrap", "vaultk8s.ops.adopt",
                "vaultk8s.ops.policy", "vaultk8s.ops.sa", "vaultk8s.plan.ca_rotation",
                "yaml", "rich", "typer.rich_utils", "ctypes")  # help is plain click; PyYAML comes with a cluster file


def test_the_cli_imports_no_vault_client_at_start():
    probe = ("import sys, vaultk8s.cli.main; "
             f"print(' '.join(m for m in {NOT_AT_START!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"
