"""`vaultk8s dev init`'s RemoteServer (the compose demo's operator side) against a real OpenBao that
this process did not start: it initialises once, unseals, and a second run only unseals and checks.
The server here listens on 127.0.0.1 and is started and stopped by the test, by pid."""

from __future__ import annotations

import datetime as dt
import subprocess

import hvac
import pytest

from vaultk8s.dev.container import RemoteServer
from vaultk8s.dev.server import server_environ, find_bao, render_config
from vaultk8s.dev.tls import render_tls_material

pytestmark = pytest.mark.integration


@pytest.fixture
def foreign_server(tmp_path, free_port):
    state, port = tmp_path / "server", free_port()
    (state / "raft").mkdir(parents=True)
    tls = render_tls_material(dt.datetime.now(dt.timezone.utc), ("localhost",))
    (state / "server.key").write_bytes(tls.server_key)
    (state / "server.pem").write_bytes(tls.server_cert)
    (state / "ca.pem").write_bytes(tls.ca_cert)
    hcl = render_config(state, port, node_id="remote", listen_host="127.0.0.1", advertise_host="localhost")
    (state / "bao.hcl").write_text(hcl)
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([find_bao(), "server", f"-config={state / 'bao.hcl'}"], stdout=log,
                                stderr=subprocess.STDOUT, env=server_environ())
    try:
        yield f"https://localhost:{port}", state / "ca.pem"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_init_once_then_only_unseal(foreign_server, tmp_path):
    addr, cacert = foreign_server
    env = RemoteServer(tmp_path / "operator", addr, cacert, start_timeout=60).up()
    assert env.addr == addr
    client = hvac.Client(url=addr, token=env.token, verify=str(cacert))
    assert client.auth.token.lookup_self()["data"]["id"] == env.token
    client.sys.seal()
    again = RemoteServer(tmp_path / "operator", addr, cacert, start_timeout=60).up()  # unseals, keeps the keys
    assert again.token == env.token and not client.sys.read_seal_status()["sealed"]
