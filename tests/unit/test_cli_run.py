"""run(): usage errors, --help and our errors become an exit code and a message, never a traceback."""

from __future__ import annotations

import sys

import pytest

from vaultk8s.cli import main


def run(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["vaultk8s", *args])
    return main.run()


def test_help_exits_zero(monkeypatch, capsys):
    assert run(monkeypatch, "dev", "--help") == 0
    assert "up" in capsys.readouterr().out


def test_bad_flag_is_a_usage_error(monkeypatch, capsys):
    assert run(monkeypatch, "dev", "up", "--bogus") == 2
    assert "No such option: --bogus" in capsys.readouterr().err


def test_our_errors_are_one_line(monkeypatch, capsys, tmp_path):
    assert run(monkeypatch, "dev", "env", "--state-dir", str(tmp_path)) == 7
    err = capsys.readouterr().err
    assert err.startswith("error: no dev server is running") and err.count("\n") == 1


def test_an_unwritable_listener_tls_is_one_line_before_any_server_starts(monkeypatch, capsys, tmp_path):
    (tmp_path / "server.key").mkdir(parents=True)  # a file the listener TLS must replace
    assert run(monkeypatch, "dev", "up", "--state-dir", str(tmp_path)) == 7
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the listener TLS in") and err.count("\n") == 1
    assert not (tmp_path / "bao.hcl").exists()  # no server was configured or started


def test_typer_exit_code_is_returned(monkeypatch, tmp_path):
    assert run(monkeypatch, "dev", "status", "--state-dir", str(tmp_path)) == 1


def test_version_and_closed_pipe_are_not_tracebacks():
    import subprocess
    import sys

    version = subprocess.run([sys.executable, "-m", "vaultk8s", "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("vaultk8s ")
    # `vaultk8s bootstrap --help | head -1`: the reader goes away mid-output.
    proc = subprocess.Popen([sys.executable, "-m", "vaultk8s", "bootstrap", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err
