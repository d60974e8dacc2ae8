"""Reload hooks against real processes: a signal by pid file, and the clear failures around it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from vaultk8s.agent.reload import ExecHook, SignalHook, parse_signal
from vaultk8s.errors import ConfigError, VaultK8sError

CATCHER = """
import signal, sys, time
signal.signal(signal.SIGUSR1, lambda *_: (open(sys.argv[1], 'a').write('USR1\\n')))
print('up', flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("name, sig", [("HUP", signal.SIGHUP), ("sighup", signal.SIGHUP), ("USR1", signal.SIGUSR1),
                                       (" TERM ", signal.SIGTERM)])
def test_signal_names(name, sig):
    assert parse_signal(name) is sig


@pytest.mark.parametrize("name, says", [("HUPP", "is not a signal name"), ("9", "is not a signal name"),
                                        ("KILL", "cannot be caught"), ("SIGSTOP", "cannot be caught")])
def test_bad_signal_names(name, says):
    with pytest.raises(ConfigError, match=says):
        parse_signal(name)


def test_signal_reaches_the_process_named_by_the_pid_file(tmp_path):
    marker = tmp_path / "got"
    proc = subprocess.Popen([sys.executable, "-c", CATCHER, str(marker)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "up\n"
        pid_file = tmp_path / "consumer.pid"
        pid_file.write_text(f"{proc.pid}\n")
        SignalHook(signal.SIGUSR1, pid_file).run({})
        deadline = time.monotonic() + 10
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == "USR1\n"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def test_missing_garbage_and_stale_pid_files_are_clear_failures(tmp_path):
    pid_file = tmp_path / "consumer.pid"
    with pytest.raises(VaultK8sError, match=f"reload: pid file {pid_file} is missing"):
        SignalHook(signal.SIGHUP, pid_file).run({})
    for junk in ("", "abc", "-5", "1", "0"):
        pid_file.write_text(junk)
        with pytest.raises(VaultK8sError, match="does not hold a process id"):
            SignalHook(signal.SIGHUP, pid_file).run({})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)
    pid_file.write_text(str(gone.pid))
    with pytest.raises(VaultK8sError, match=rf"names pid {gone.pid}, which is not running \(stale pid file\)"):
        SignalHook(signal.SIGHUP, pid_file).run({})


def test_exec_hook_failures_name_the_command(tmp_path):
    with pytest.raises(VaultK8sError, match="reload hook false exited 1"):
        ExecHook(("false",)).run({})
    with pytest.raises(VaultK8sError, match="failed: FileNotFoundError"):
        ExecHook((str(tmp_path / "nope"),)).run({})
