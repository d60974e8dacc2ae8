"""A three-member etcd cluster on the issued etcd/server and etcd/peer certificates, with client-cert
auth: the etcd-ca clients are let in, clients of the other two CAs are refused.

Runs in both CA modes: Vault-held roots, and HSM mode, where etcd/ca.crt is the token's root only and
every member and client presents leaf + intermediate (for peer TLS too: the cluster forms only if the
members accept each other's peer chains against that root-only file).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.helpers.etcd import ETCD, ETCDCTL, MEMBERS, etcdctl, free_port, start_member, wait_healthy
from tests.helpers.hsm import HAVE_SOFTHSM, hsm_section, init_dev_token, token_environ
from tests.helpers.nodes import run_cli, write_cluster
from vaultk8s import crypto

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["vault-root", "hsm"])
def etcd_cluster(request, openbao, tmp_path_factory):
    """One cluster per CA mode: starting three members is the slow part."""
    if not (ETCD and ETCDCTL):
        pytest.skip("etcd-server / etcd-client not installed")
    if request.param == "hsm" and not HAVE_SOFTHSM:
        pytest.skip("SoftHSM2 is not installed")
    tmp_path = tmp_path_factory.mktemp(f"etcd-{request.param}")
    env, sections = openbao.as_environ(), {}
    if request.param == "hsm":  # the CLI runs as a subprocess: the token reaches it through env only
        env.update(token_environ(init_dev_token(tmp_path / "state")))
        sections["hsm"] = hsm_section("ec-p384")
    cluster = write_cluster(tmp_path, f"e{uuid.uuid4().hex[:8]}/", MEMBERS, **sections)
    out = tmp_path / "out"
    run_cli(["bootstrap", "-c", str(cluster), "-o", str(out)], env)
    _check_chain_shape(out / MEMBERS[0][0] / "pki", hsm=request.param == "hsm")
    ports = {name: (free_port(ip), free_port(ip)) for name, ip in MEMBERS}
    initial = ",".join(f"{n}=https://{ip}:{ports[n][1]}" for n, ip in MEMBERS)
    procs = []
    try:
        for name, ip in MEMBERS:
            procs.append(start_member(tmp_path, out / name / "pki", name, ip, ports[name], initial))
        endpoints = [f"https://{ip}:{ports[n][0]}" for n, ip in MEMBERS]
        wait_healthy(out / "cp-1" / "pki", endpoints, procs)
        yield out / "cp-1" / "pki", endpoints, tmp_path / "etcd-cp-1.log"
    finally:
        # SIGKILL: the data dirs are throwaway, and on SIGTERM the leader first tries to hand over
        # leadership to members that are stopping too, which costs ~7 s per cluster.
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(timeout=10)


def _check_chain_shape(pki: Path, hsm: bool) -> None:
    """What the members are started with: in HSM mode a root-only ca.crt and two-certificate chains."""
    (root,) = crypto.load_certs((pki / "etcd/ca.crt").read_bytes())
    assert crypto.is_self_signed(root)
    for name in ("server", "peer", "healthcheck-client"):
        chain = crypto.load_certs((pki / f"etcd/{name}.crt").read_bytes())
        if hsm:
            assert len(chain) == 2 and not crypto.is_self_signed(chain[1]), name
            assert crypto.signed_by(chain[0], chain[1]) and crypto.signed_by(chain[1], root), name
        else:
            assert len(chain) == 1 and crypto.signed_by(chain[0], root), name


@pytest.mark.parametrize("client", ["apiserver-etcd-client", "etcd/healthcheck-client"])
def test_etcd_ca_clients_are_accepted(etcd_cluster, client):
    pki, endpoints, _ = etcd_cluster
    health = etcdctl(pki, endpoints, client, "endpoint", "health")
    assert health.returncode == 0, health.stderr
    assert health.stderr.count("is healthy") + health.stdout.count("is healthy") == 3
    members = etcdctl(pki, endpoints, client, "member", "list")
    assert members.returncode == 0 and {"cp-1", "cp-2", "cp-3"} <= set(members.stdout.replace(",", " ").split())


@pytest.mark.parametrize("client", ["admin", "front-proxy-client"])  # kubernetes-ca, front-proxy-ca
def test_other_cas_are_refused(etcd_cluster, client):
    pki, endpoints, log = etcd_cluster
    # A refused client only waits out its timeouts: short ones keep the four refusals cheap.
    result = etcdctl(pki, endpoints[:1], client, "endpoint", "health", command_timeout="2s")
    assert result.returncode != 0
    assert "is healthy" not in result.stdout + result.stderr
    assert "unhealthy" in result.stdout + result.stderr
    put = etcdctl(pki, endpoints[:1], client, "put", "k", "v", command_timeout="2s")
    assert put.returncode != 0
    # Refused by the TLS client-certificate check, not by a timeout or a wrong address.
    assert "failed to verify client certificate: x509: certificate signed by unknown authority" in log.read_text()
