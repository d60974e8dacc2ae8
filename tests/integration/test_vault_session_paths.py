"""The Vault session's short path (vault/session.py) against requests' full one: the same answers,
the same exceptions for the failover rules, one kept-alive connection, and cookies kept. Real
OpenBao, and a loopback HTTP server for what OpenBao never does (cookies, a slow answer)."""

from __future__ import annotations

import http.server
import json
import logging
import threading
import time
import traceback
from contextlib import contextmanager

import pytest
import requests

from tests.helpers.ports import find_free_port
from vaultk8s.errors import VaultError
from vaultk8s.vault.failover import AMBIGUOUS, UNSENT, classify
from vaultk8s.vault.gateway import _RETRY, VaultGateway
from vaultk8s.vault.session import VaultSession, vault_session


def _gateway(openbao) -> VaultGateway:
    return VaultGateway.from_env({"VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.token,
                                  "VAULT_CACERT": str(openbao.cacert)})


def _both(addr: str, cacert=None):
    """(the short path, requests' full path) for the same address, trust and retries."""
    direct = vault_session(addr, cacert, False, _RETRY, 4)
    full = requests.Session()
    full.trust_env, full.verify = False, direct.verify
    for scheme in ("http://", "https://"):
        full.mount(scheme, requests.adapters.HTTPAdapter(max_retries=_RETRY))
    return direct, full


def test_the_gateway_takes_the_short_path_on_one_connection(openbao, caplog):
    gateway = _gateway(openbao)
    assert type(gateway.client.session) is VaultSession
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        for _ in range(20):
            assert gateway.read_policy("default") is not None
    opened = [r for r in caplog.records if "Starting new HTTPS connection" in r.getMessage()]
    assert len(opened) == 1, [r.getMessage() for r in opened]
    assert gateway.read_policy("no-such-policy-here") is None  # a 404 answer, read and given back
    assert not gateway.client.session.get_adapter(openbao.addr).poolmanager.pools  # requests' pools unused


def test_no_proxy_alone_keeps_the_short_path(openbao, monkeypatch):
    """NO_PROXY without a proxy for Vault's scheme (common on corporate machines) is no proxy."""
    monkeypatch.setenv("NO_PROXY", "example.org")
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    gateway = _gateway(openbao)
    assert gateway.read_policy("default") is not None
    assert not gateway.client.session.get_adapter(openbao.addr).poolmanager.pools


@pytest.mark.parametrize("token", ["tok\n evil", " tok", "tok\r\n X-Other: 1"])
def test_a_token_that_is_not_a_header_value_never_leaves(openbao, token, caplog):
    """A token from a file or a login that would fold or inject a header: one line, token not shown."""
    gateway = _gateway(openbao)
    gateway.client.token = token
    with pytest.raises(VaultError) as caught:
        gateway.read_policy("default")
    assert str(caught.value) == "VAULT_TOKEN holds whitespace or a newline: strip it and retry"
    shown = "".join(traceback.format_exception(caught.value)) + caplog.text  # what a user or a log would see
    assert "tok" not in shown.replace("VAULT_TOKEN", "").replace("token", "")


def test_answers_and_errors_equal_requests_own(openbao):
    direct, full = _both(openbao.addr, str(openbao.cacert))
    headers = {"X-Vault-Token": openbao.token}
    for method, path, body in (("GET", "sys/health", None), ("GET", "sys/policies/acl/default", None),
                               ("LIST", "sys/policies/acl", None), ("GET", "sys/policies/acl/missing", None),
                               ("POST", "sys/capabilities-self", {"paths": ["sys/health"]})):
        url = f"{openbao.addr}/v1/{path}"
        ours, theirs = (s.request(method, url, headers=headers, json=body, timeout=10) for s in (direct, full))
        assert (ours.status_code, ours.headers.get("Content-Type")) == (theirs.status_code, theirs.headers.get("Content-Type"))
        if ours.status_code == 200:
            assert ours.json().keys() == theirs.json().keys()
        else:
            assert ours.json() == theirs.json()


def test_a_refused_connection_is_unsent_for_the_failover_rules():
    addr = f"http://127.0.0.1:{find_free_port()}"
    direct, full = _both(addr)
    errors = []
    for session in (direct, full):
        with pytest.raises(requests.exceptions.ConnectionError) as caught:
            session.request("POST", f"{addr}/v1/sys/health", json={"x": 1}, timeout=2)
        errors.append(caught.value)
    assert type(errors[0]) is type(errors[1])
    assert [classify(e) for e in errors] == [UNSENT, UNSENT]


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the timeout test hangs up before the answer: a broken pipe here is expected


@contextmanager
def _loopback(handler_class):
    server = _QuietServer(("127.0.0.1", find_free_port()), handler_class)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _Recorder(http.server.BaseHTTPRequestHandler):
    cookies_seen: list[str | None] = []
    paths_seen: list[str] = []
    delay = 0.0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).cookies_seen.append(self.headers.get("Cookie"))
        type(self).paths_seen.append(self.path)
        time.sleep(type(self).delay)
        body = json.dumps({"data": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "lb=node-2; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_load_balancers_cookie_is_kept_and_sent():
    _Recorder.cookies_seen, _Recorder.delay = [], 0.0
    with _loopback(_Recorder) as addr:
        session = vault_session(addr, None, False, _RETRY, 4)
        for _ in range(2):
            assert session.request("GET", f"{addr}/v1/sys/health", timeout=5).json() == {"data": {}}
    assert _Recorder.cookies_seen == [None, "lb=node-2"]


def test_a_read_timeout_is_ambiguous_as_with_requests():
    _Recorder.cookies_seen, _Recorder.delay = [], 1.5
    with _loopback(_Recorder) as addr:
        direct, full = _both(addr)
        errors = []
        for session in (direct, full):
            with pytest.raises(requests.exceptions.RequestException) as caught:
                session.request("GET", f"{addr}/v1/sys/health", timeout=0.3)
            errors.append(caught.value)
    assert type(errors[0]) is type(errors[1])
    assert [classify(e) for e in errors] == [AMBIGUOUS, AMBIGUOUS]


def test_a_proxy_from_the_environment_is_still_used(monkeypatch):
    """With a proxy for Vault's host the call takes requests' path, which sends it to the proxy."""
    _Recorder.paths_seen, _Recorder.delay = [], 0.0
    with _loopback(_Recorder) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        session = vault_session("http://vault.invalid:8200", None, False, _RETRY, 4)
        assert session.request("GET", "http://vault.invalid:8200/v1/sys/health", timeout=5).json() == {"data": {}}
    assert _Recorder.paths_seen == ["http://vault.invalid:8200/v1/sys/health"]


def test_query_parameters_equal_requests_own():
    """None is left out, as requests leaves it out; lists repeat the key."""
    _Recorder.paths_seen, _Recorder.delay = [], 0.0
    params = {"version": 3, "list": "true", "gone": None, "keys": ["a", "b"]}
    with _loopback(_Recorder) as addr:
        for session in _both(addr):
            session.request("GET", f"{addr}/v1/kv/data/x", params=params, timeout=5)
    assert _Recorder.paths_seen[0] == _Recorder.paths_seen[1] == "/v1/kv/data/x?version=3&list=true&keys=a&keys=b"
