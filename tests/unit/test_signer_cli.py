"""`vaultk8s signer` refuses bad input with one line and an exit code, before touching Vault or Kubernetes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vaultk8s.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml")


@pytest.mark.parametrize("args, code, needle", [
    (["--metrics-addr", "9464"], 2, "HOST:PORT"),
    (["--resync", "soon"], 2, "duration"),
    (["--credentials", "/tmp", "--token-file", "/tmp/t"], 2, "at most one"),
    (["--credentials", "/nonexistent"], 2, "signer-credentials"),
    (["--kubeconfig", "/nonexistent/signer.conf"], 8, "cannot load kubeconfig"),
    ([], 8, "in-cluster config"),  # no --kubeconfig outside a pod
])
def test_bad_input_is_one_line(monkeypatch, capsys, args, code, needle):
    monkeypatch.setenv("VAULT_ADDR", "https://127.0.0.1:1")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(sys, "argv", ["vaultk8s", "signer", "--config", EXAMPLE, *args])
    assert main.run() == code
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
