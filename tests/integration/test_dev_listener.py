"""The dev server's listener certificate is renewed before it lapses, by the real server.

`vaultk8s dev serve` (the compose demo's OpenBao) runs for years, so it re-issues the certificate
from its kept CA and sends the real OpenBao SIGHUP. Here its lifetime is scaled down to 12 s, and
the test runs past two of them. The server is on 127.0.0.1 and is stopped by pid with SIGTERM,
which `dev serve` passes on. `vaultk8s dev up` renews a due certificate of running nodes the same way.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import ssl
import subprocess
import sys
import time

import pytest
import requests
from cryptography import x509

from vaultk8s.dev import DevServer

pytestmark = pytest.mark.integration

LIFETIME = 12  # seconds; renewed at 8


def _served(port: int) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ssl.get_server_certificate(("127.0.0.1", port), timeout=5).encode())


def _answers(port: int, cacert) -> bool:
    """A verified TLS request: the served certificate chains to ca.pem and is valid now."""
    return requests.get(f"https://localhost:{port}/v1/sys/health", verify=str(cacert), timeout=5).status_code in (
        200, 429, 472, 473, 501, 503)


def _wait(check, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, requests.RequestException):
            if time.monotonic() >= deadline:
                raise
        if time.monotonic() >= deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


@pytest.fixture
def dev_serve(tmp_path, free_port):
    state, port = tmp_path / "openbao", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "vaultk8s", "dev", "serve", "--state-dir", str(state),
                                 "--hostname", "localhost", "--listen", f"127.0.0.1:{port}",
                                 "--tls-lifetime", f"{LIFETIME}s"], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc, port, state, tmp_path / "serve.log"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_dev_serve_renews_its_listener_certificate_past_two_lifetimes(dev_serve):
    proc, port, state, log = dev_serve
    first = _wait(lambda: _served(port), 60)
    assert _answers(port, state / "ca.pem")
    ca = (state / "ca.pem").read_bytes()
    serials, started = {first.serial_number}, time.monotonic()
    while time.monotonic() - started < 2 * LIFETIME + 2:  # past the first certificate's end, twice
        cert = _served(port)
        assert dt.datetime.now(dt.timezone.utc) < cert.not_valid_after_utc  # never serves a lapsed one
        assert _answers(port, state / "ca.pem")
        serials.add(cert.serial_number)
        time.sleep(0.5)
    assert len(serials) >= 3, "expected at least two renewals"
    assert (state / "ca.pem").read_bytes() == ca  # the same CA: clients keep their VAULT_CACERT
    assert oct((state / "ca.key").stat().st_mode & 0o777) == "0o600"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0  # passed on to OpenBao, whose status it returns
    text = log.read_text()
    assert text.count("listener certificate renewed; reloading the server (SIGHUP)") >= 2
    assert "PRIVATE KEY" not in text and "Traceback" not in text
    with pytest.raises(OSError):
        _served(port)  # the server went with it


@pytest.mark.parametrize("flag, value", [("--listen", "[::1]:8200"), ("--listen", "127.0.0.1:65535"),
                                         ("--tls-lifetime", "soon"), ("--tls-lifetime", "1s"),
                                         ("--hostname", "open bao")])
def test_dev_serve_refuses_bad_input_before_writing(tmp_path, flag, value):
    out = subprocess.run([sys.executable, "-m", "vaultk8s", "dev", "serve", "--state-dir", str(tmp_path / "s"),
                          flag, value], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and flag in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "s").exists()


def test_dev_up_renews_a_due_certificate_of_the_running_server(tmp_path, free_port):
    server = DevServer(tmp_path / "bao", port=free_port(), tls_lifetime=dt.timedelta(seconds=LIFETIME))
    env = server.up()
    try:
        first = _served(server.port)
        time.sleep(LIFETIME * 2 / 3 + 1)
        server.up()  # finds the certificate due: re-issues it and sends the running node SIGHUP
        renewed = _wait(lambda: (c := _served(server.port)).serial_number != first.serial_number and c, 10)
        time.sleep(max(0.0, (first.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1)
        assert _answers(server.port, env.cacert)  # past the first certificate's end
        assert renewed.not_valid_after_utc > first.not_valid_after_utc
    finally:
        server.down()
