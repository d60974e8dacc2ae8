"""When the signer reads a CSR again before acting: always for a watch event or after its leadership
term changed, never for a CSR from a list taken in the term still running. In-memory API server
and Vault; the real ones are in tests/integration/test_signer_kube.py (two replicas, backlog)."""

from __future__ import annotations

import base64
import copy

from vaultk8s.config import parse_config
from vaultk8s.plan.csr_review import CLIENT_SIGNER
from vaultk8s.signer.controller import Signer, SignerSettings
from vaultk8s.signer.leader import LeaseElector

from tests.helpers.csr import CLIENT_USAGES, make_request
from tests.helpers.lease import Clock, LeaseStore

DOC = {
    "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443", "domain": "example.org"},
    "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}],
              "workers": [{"name": "worker-1", "ips": ["10.0.1.1"]}]},
}


def _csr(name: str, approved: bool = True) -> dict:
    pem = make_request("system:node:worker-1")[1]
    return {"metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"request": base64.b64encode(pem.encode()).decode(), "signerName": CLIENT_SIGNER,
                     "usages": CLIENT_USAGES, "username": "system:node:worker-1", "groups": ["system:nodes"]},
            "status": {"conditions": [{"type": "Approved", "status": "True"}] if approved else []}}


class Api(LeaseStore):
    """CSRs and the Lease; counts the CSR reads."""

    def __init__(self, csrs: list[dict]):
        super().__init__()
        self.csrs = {c["metadata"]["name"]: c for c in csrs}
        self.reads: list[str] = []

    def list_csrs(self):
        return [copy.deepcopy(c) for c in self.csrs.values()], "7"

    def read_csr(self, name):
        self.reads.append(name)
        return copy.deepcopy(self.csrs.get(name))

    def set_certificate(self, csr, bundle):
        self.csrs[csr["metadata"]["name"]]["status"]["certificate"] = base64.b64encode(bundle).decode()


class Vault:
    def __init__(self):
        self.signed: list[str] = []

    def sign(self, mount, role, csr_pem, ttl):
        self.signed.append(role)
        return b"-----BEGIN CERTIFICATE-----\n"


def _signer(csrs: list[dict]) -> tuple[Signer, Api, Vault, Clock]:
    api, vault, clock = Api(csrs), Vault(), Clock()
    elector = LeaseElector(api, "kube-system", "vaultk8s-signer", "a", clock=lambda: clock.now,
                           monotonic=lambda: clock.mono)
    return Signer(SignerSettings(config=parse_config(DOC), workers=2), api, vault, elector), api, vault, clock


def test_a_list_taken_while_leading_is_acted_on_as_listed():
    signer, api, vault, _ = _signer([_csr("a"), _csr("b"), _csr("pending", approved=False)])
    assert signer.elector.try_acquire_or_renew()
    assert signer.sync() == "7"
    assert sorted(vault.signed) == ["kubelet-client-worker-1"] * 2
    assert api.reads == []  # one list and two writes, no read per CSR
    assert signer.elector.term == 1


def test_a_watch_event_and_a_list_from_an_earlier_term_are_read_again():
    signer, api, vault, clock = _signer([_csr("a")])
    assert signer.elector.try_acquire_or_renew()
    listed = api.list_csrs()[0][0]
    clock.advance(11)  # past the renew deadline: leadership lapsed
    assert not signer.elector.is_leader() and signer.handle(listed, listed_in_term=1) is None
    assert signer.elector.try_acquire_or_renew() and signer.elector.term == 2
    api.csrs["a"]["status"]["certificate"] = "c2lnbmVk"  # signed meanwhile, say by a replica before us
    assert signer.handle(listed, listed_in_term=1) is None
    assert api.reads == ["a"] and vault.signed == []
    del api.csrs["a"]["status"]["certificate"]
    assert signer.handle(listed) is not None  # a watch event: read again, then signed
    assert api.reads == ["a", "a"] and vault.signed == ["kubelet-client-worker-1"]


def test_renewing_keeps_the_term():
    signer, _, _, clock = _signer([])
    for _ in range(3):
        assert signer.elector.try_acquire_or_renew()
        clock.advance(5)
    assert signer.elector.term == 1


def test_stop_wakes_a_standby_loop_waiting_for_the_lease():
    signer, _, _, _ = _signer([])
    signer.stop()
    assert signer.elector.wait_for_leadership(30) is False  # returns at once: run() then sees the stop
