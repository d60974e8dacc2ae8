"""Which failures the failover layer may repeat (vaultk8s/vault/failover.py), and the dev cluster's HCL."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path

import hvac.exceptions as hv
import pytest
import requests
import urllib3.exceptions

from vaultk8s.dev import render_config
from vaultk8s.vault import failover
from vaultk8s.vault.failover import AMBIGUOUS, LAGGING, UNSENT, classify


def _conn_error(reason: Exception) -> requests.ConnectionError:
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/v1/x", reason))


@pytest.mark.parametrize(("err", "kind"), [
    (_conn_error(urllib3.exceptions.NewConnectionError(None, "refused")), UNSENT),
    (requests.exceptions.ConnectTimeout(), UNSENT),
    (requests.ConnectionError(urllib3.exceptions.ProtocolError("aborted", http.client.RemoteDisconnected())),
     AMBIGUOUS),
    (requests.exceptions.ReadTimeout(), AMBIGUOUS),
    (hv.VaultDown("Vault is sealed"), UNSENT),
    (hv.InternalServerError("local node not active but active cluster node not found"), UNSENT),
    (hv.InternalServerError("rpc error: code = Unavailable"), AMBIGUOUS),
    (hv.InternalServerError("1 error occurred:\n\t* no default issuer currently configured\n\n"), None),
    (hv.InternalServerError("1 error occurred:\n\t* unable to find PKI issuer for reference: nope"), None),
    (hv.BadGateway("bad gateway"), AMBIGUOUS),
    (hv.InvalidRequest("Waiting for the primary to upgrade from non-versioned to versioned data."), UNSENT),
    (hv.InvalidPath('no handler for route "x/roles/y". route entry not found.'), LAGGING),
    (hv.InvalidPath("not found"), None),
    (hv.InvalidRequest("check-and-set parameter did not match the current version"), None),
    (hv.Forbidden("permission denied"), None),
    (requests.exceptions.SSLError("certificate verify failed"), None),
])
def test_classify(err, kind):
    assert classify(err) == kind


def test_writes_repeat_after_an_ambiguous_failure_only_when_marked():
    assert failover.FailoverAdapter._repeatable("GET") and failover.FailoverAdapter._repeatable("list")
    assert not failover.FailoverAdapter._repeatable("POST")
    with failover.repeatable():
        assert failover.FailoverAdapter._repeatable("POST")
    assert not failover.FailoverAdapter._repeatable("PUT")


def test_index_value_reads_openbaos_opaque_header():
    header = base64.b64encode(json.dumps({"cluster": "c", "value": "610"}).encode()).decode()
    assert failover._index_value(header) == 610
    assert failover._index_value("not base64 json") == 0


def test_cluster_node_config_joins_its_peers():
    hcl = render_config(Path("/s/node2"), 18202, tls_dir=Path("/s"), node_id="dev2", peers=(18200, 18204))
    assert 'node_id                = "dev2"' in hcl and "performance_multiplier = 1" in hcl
    assert hcl.count("retry_join {") == 2 and 'leader_api_addr     = "https://127.0.0.1:18204"' in hcl
    assert 'leader_ca_cert_file = "/s/ca.pem"' in hcl and 'tls_key_file    = "/s/server.key"' in hcl
    assert "retry_join" not in render_config(Path("/s"), 18200)
