"""Reload hooks run once after a round that wrote files: a command (`--exec`) or a signal to a pid file.

A failed reload fails the round and stays pending, so the next round retries it even when nothing
new was written (otherwise the consumer would keep the old certificate until the next renewal).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from vaultk8s.errors import ConfigError, VaultK8sError
from vaultk8s.store.atomic import read_file

HOOK_TIMEOUT_SECONDS = 120
_NOT_SIGNALS = {signal.SIGKILL, signal.SIGSTOP}  # a reload, not a kill


@dataclass(frozen=True)
class ExecHook:
    argv: tuple[str, ...]  # run without a shell

    def run(self, env: Mapping[str, str]) -> None:
        try:
            proc = subprocess.run(list(self.argv), env=dict(env), timeout=HOOK_TIMEOUT_SECONDS,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise VaultK8sError(f"reload hook {self.argv[0]} failed: {type(err).__name__}") from None
        if proc.returncode != 0:
            raise VaultK8sError(f"reload hook {self.argv[0]} exited {proc.returncode}")


@dataclass(frozen=True)
class SignalHook:
    signal: signal.Signals
    pid_file: Path

    def run(self, env: Mapping[str, str]) -> None:
        pid = read_pid(self.pid_file)
        try:
            os.kill(pid, self.signal)
        except ProcessLookupError:
            raise VaultK8sError(f"reload: pid file {self.pid_file} names pid {pid}, which is not running "
                                "(stale pid file)") from None
        except PermissionError:
            raise VaultK8sError(f"reload: not allowed to signal pid {pid} from {self.pid_file}") from None


def read_pid(pid_file: Path) -> int:
    try:
        data = read_file(pid_file)
    except VaultK8sError as err:
        raise VaultK8sError(f"reload: {err}") from None
    if data is None:
        raise VaultK8sError(f"reload: pid file {pid_file} is missing")
    text = data.decode(errors="replace").strip()
    if not text.isdigit() or int(text) < 2:  # 0 and 1 would signal a process group or init
        raise VaultK8sError(f"reload: pid file {pid_file} does not hold a process id")
    return int(text)


def parse_signal(name: str) -> signal.Signals:
    """`HUP`, `SIGHUP` or `hup` -> signal.SIGHUP; KILL and STOP are refused."""
    wanted = name.strip().upper()
    wanted = wanted if wanted.startswith("SIG") else f"SIG{wanted}"
    try:
        sig = signal.Signals[wanted]
    except KeyError:
        raise ConfigError(f"--reload-signal {name!r} is not a signal name (e.g. HUP, USR1)", "command line") from None
    if sig in _NOT_SIGNALS:
        raise ConfigError(f"--reload-signal {name!r} cannot be caught: that is a kill, not a reload", "command line")
    return sig
