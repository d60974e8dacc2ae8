"""The shared health/metrics listener and sd_notify, over real sockets (HTTP on loopback, a unix datagram socket)."""

from __future__ import annotations

import os
import socket
import time

import pytest
import requests
from prometheus_client import CollectorRegistry, Counter

from vaultk8s.errors import ConfigError
from vaultk8s.serve import HealthServer, Notifier, Watchdog, parse_listen_addr
from vaultk8s.serve.http import check_port


@pytest.mark.parametrize("value, want", [("127.0.0.1:9469", ("127.0.0.1", 9469)), ("0.0.0.0:1", ("0.0.0.0", 1)),
                                         ("[::1]:65535", ("::1", 65535)), ("localhost:80", ("localhost", 80))])
def test_listen_addresses(value, want):
    assert parse_listen_addr(value) == want


@pytest.mark.parametrize("value, says", [("9469", "expected HOST:PORT"), (":9469", "expected HOST:PORT"),
                                         ("127.0.0.1:0", "not in 1-65535"), ("127.0.0.1:65536", "not in 1-65535"),
                                         ("127.0.0.1:http", "not in 1-65535"), ("::1:9469", "in brackets"),
                                         ("[nope]:9469", "not an IPv6 address")])
def test_bad_listen_addresses_are_one_line(value, says):
    with pytest.raises(ConfigError) as err:
        parse_listen_addr(value)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_port_range():
    assert check_port(1) == 1
    with pytest.raises(ConfigError, match="--metrics-port: port 0 is not in 1-65535"):
        check_port(0)


def test_endpoints_answer_over_http():
    registry = CollectorRegistry()
    Counter("demo_things", "Things.", registry=registry).inc()
    state = {"live": None, "ready": "no successful renewal round yet"}
    server = HealthServer("127.0.0.1", 0, registry, liveness=lambda: state["live"],
                          readiness=lambda: state["ready"]).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.get(f"{base}/healthz", timeout=5).text == "ok\n"
        ready = requests.get(f"{base}/readyz", timeout=5)
        assert (ready.status_code, ready.text) == (503, "no successful renewal round yet\n")
        state["live"], state["ready"] = "pki/kubelet.crt expired\nat noon", None
        live = requests.get(f"{base}/healthz", timeout=5)
        assert (live.status_code, live.text) == (503, "pki/kubelet.crt expired at noon\n")  # one line
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        assert "demo_things_total 1.0" in requests.get(f"{base}/metrics", timeout=5).text
        assert requests.get(f"{base}/other", timeout=5).status_code == 404
    finally:
        server.stop()


def test_a_check_that_raises_is_unhealthy_not_a_dead_listener():
    server = HealthServer("127.0.0.1", 0, CollectorRegistry(), liveness=lambda: 1 / 0, readiness=lambda: None).start()
    try:
        resp = requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert (resp.status_code, resp.text) == (503, "check failed: ZeroDivisionError\n")
    finally:
        server.stop()


def test_port_in_use_is_one_clear_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            HealthServer("127.0.0.1", port, CollectorRegistry(), liveness=lambda: None, readiness=lambda: None).start()
    assert str(err.value) == f"command line: cannot listen on 127.0.0.1:{port}: address already in use " \
                             "(another agent or exporter on that port?)"


@pytest.fixture
def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.settimeout(10)
    yield sock, str(path)
    sock.close()


def test_ready_goes_to_notify_socket(notify_socket):
    sock, path = notify_socket
    assert Notifier({"NOTIFY_SOCKET": path}).ready("certificates in place")
    assert sock.recv(4096) == b"READY=1\nSTATUS=certificates in place"


def test_abstract_notify_socket():
    name = f"vaultk8s-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_without_systemd_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.ready()
    assert not Watchdog(notifier, lambda: None).start()


def test_a_vanished_socket_is_a_warning_not_a_crash(tmp_path):
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send("READY=1")


def test_watchdog_interval_is_ours_only():
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_seconds == 30
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_seconds is None
    assert Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "x"}).watchdog_seconds is None


def test_watchdog_pings_only_while_healthy(notify_socket):
    sock, path = notify_socket
    state = {"reason": None}
    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}), lambda: state["reason"])
    assert dog.start()
    try:
        assert sock.recv(4096) == b"WATCHDOG=1"
        state["reason"] = "pki/kubelet.crt expired"
        deadline = time.monotonic() + 10
        while sock.recv(4096) != b"STATUS=unhealthy: pki/kubelet.crt expired" and time.monotonic() < deadline:
            pass
        assert sock.recv(4096) == b"STATUS=unhealthy: pki/kubelet.crt expired"  # and no WATCHDOG=1 any more
    finally:
        dog.stop()


def test_a_check_that_raises_stops_the_pings_not_the_watchdog(notify_socket):
    sock, path = notify_socket
    state = {"broken": True}

    def healthy():
        if state["broken"]:
            raise OSError("pki/ unreadable for a moment")
        return None

    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"}), healthy)
    assert dog.start()
    try:
        assert sock.recv(4096) == b"STATUS=unhealthy: check failed: OSError"
        state["broken"] = False
        deadline = time.monotonic() + 10
        while sock.recv(4096) != b"WATCHDOG=1" and time.monotonic() < deadline:
            pass
        assert sock.recv(4096) == b"WATCHDOG=1"  # the thread lived on, and pings again once healthy
    finally:
        dog.stop()
