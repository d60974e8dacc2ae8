"""sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET per message (READY=1, WATCHDOG=1)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable, Mapping

from vaultk8s.serve.checks import run_check

log = logging.getLogger("vaultk8s.serve")


class Notifier:
    """Talks to systemd when it is listening (Type=notify sets NOTIFY_SOCKET); a no-op otherwise."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_seconds = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def send(self, *fields: str) -> bool:
        if self.socket_path is None:
            return False
        address = "\0" + self.socket_path[1:] if self.socket_path.startswith("@") else self.socket_path
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto("\n".join(fields).encode(), address)
        except OSError as err:  # systemd went away or the path is wrong: keep running, say so once
            log.warning("sd_notify to %s failed: %s", self.socket_path, err.strerror or err)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))


class Watchdog:
    """Pings WATCHDOG=1 every half WatchdogSec while healthy() is None, so systemd restarts an unhealthy process."""

    def __init__(self, notifier: Notifier, healthy: Callable[[], "str | None"]):
        self.notifier, self.healthy = notifier, healthy
        self._stopped = threading.Event()

    def start(self) -> bool:
        if not self.notifier.enabled or self.notifier.watchdog_seconds is None:
            return False
        threading.Thread(target=self._loop, args=(self.notifier.watchdog_seconds / 2,), name="vaultk8s-watchdog",
                         daemon=True).start()
        return True

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            reason = run_check(self.healthy)
            if reason is None:
                self.notifier.send("WATCHDOG=1")
            else:
                log.warning("not pinging the systemd watchdog: %s", reason)
                self.notifier.send(f"STATUS=unhealthy: {reason}")


def _watchdog_seconds(env: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC, unless WATCHDOG_PID names another process (then the watchdog is not ours)."""
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None
