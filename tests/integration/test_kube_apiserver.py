"""The real consumer: a kube-apiserver (and kube-controller-manager) v1.24 running on the tree that
`vaultk8s bootstrap` wrote, with kubeadm's flags. Every identity the catalog issues authenticates as
the user and groups it was issued for, the front-proxy client is trusted only for requestheader
auth, and sa.key/sa.pub mint and verify service-account tokens.

Identity is read from the API server's own words: a 403 names the user it authenticated.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.helpers.kube import running_control_plane

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def plane(openbao, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kube")
    prefix = f"k{tmp.name[-6:].replace('-', '')}/"
    with running_control_plane(tmp, openbao.as_environ(), prefix, workers=1) as running:
        yield running


def _forbidden_user(plane, kubeconfig) -> str:
    """Ask for a path no role grants; the API server's refusal names who it authenticated."""
    result = plane.kubectl("get", "--raw=/vaultk8s-probe", kubeconfig=kubeconfig, check=False)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr, result.stderr
    return result.stderr.split('User "', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(("node", "conf", "user"), [
    ("cp-1", "controller-manager.conf", "system:kube-controller-manager"),
    ("cp-1", "scheduler.conf", "system:kube-scheduler"),
    ("worker-1", "kube-proxy.conf", "system:kube-proxy"),
    ("worker-1", "kubelet.conf", "system:node:worker-1"),
])
def test_component_kubeconfigs_authenticate_as_their_identity(plane, node, conf, user):
    assert _forbidden_user(plane, plane.out / node / conf) == user


def test_kubelet_is_authorised_by_the_node_authorizer(plane):
    """`can-i get nodes` is yes only for user system:node:<n> in group system:nodes (Node authorizer)."""
    result = plane.kubectl("auth", "can-i", "get", "nodes/worker-1", kubeconfig=plane.out / "worker-1/kubelet.conf",
                           check=False)
    assert result.stdout.strip() == "yes", result.stdout + result.stderr


def test_admin_is_cluster_admin_through_the_rbac_binding(plane):
    """admin.conf carries O=kubeadm:cluster-admins, bound to cluster-admin by the written rbac.yaml."""
    assert "kube-system" in plane.kubectl("get", "namespaces", "-o", "name").stdout
    assert plane.kubectl("auth", "can-i", "delete", "secrets", "-A").stdout.strip() == "yes"


def test_front_proxy_client_is_trusted_only_for_requestheader_auth(plane):
    pki = plane.pki
    # verify= per request: a session's own verify loses to REQUESTS_CA_BUNDLE in requests.
    tls = {"verify": str(pki / "ca.crt"), "timeout": 20,
           "cert": (str(pki / "front-proxy-client.crt"), str(pki / "front-proxy-client.key"))}
    url = f"{plane.url}/api/v1/namespaces/default/configmaps"
    forwarded = requests.get(url, headers={"X-Remote-User": "alice", "X-Remote-Group": "team"}, **tls)
    assert forwarded.status_code == 403 and 'User "alice"' in forwarded.json()["message"], forwarded.text
    plane.kubectl("create", "role", "cm-reader", "-n", "default", "--verb=list", "--resource=configmaps")
    plane.kubectl("create", "rolebinding", "alice-cm", "-n", "default", "--role=cm-reader", "--user=alice")
    assert requests.get(url, headers={"X-Remote-User": "alice"}, **tls).status_code == 200
    # Without the header the same certificate is not a user at all: its CA is not the client CA.
    assert requests.get(url, **tls).status_code == 401


def test_service_account_tokens_are_signed_with_sa_key(plane):
    plane.kubectl("create", "serviceaccount", "probe", "-n", "default")
    token = plane.kubectl("create", "token", "probe", "-n", "default").stdout.strip()
    response = requests.get(f"{plane.url}/vaultk8s-probe", verify=str(plane.pki / "ca.crt"),
                            headers={"Authorization": f"Bearer {token}"}, timeout=20)
    assert response.status_code == 403, response.text
    assert 'User "system:serviceaccount:default:probe"' in response.json()["message"]


def test_controller_manager_runs_from_its_kubeconfig(plane):
    """It publishes ca.crt into every namespace as kube-root-ca.crt: proof it authenticated and works."""
    proc = plane.start_controller_manager()
    deadline, data = time.monotonic() + 90, None
    while time.monotonic() < deadline and proc.poll() is None:
        result = plane.kubectl("get", "configmap", "kube-root-ca.crt", "-n", "default",
                               "-o", "jsonpath={.data.ca\\.crt}", check=False)
        if result.returncode == 0 and result.stdout:
            data = result.stdout
            break
        time.sleep(1)
    assert proc.poll() is None, plane.log("kube-controller-manager-0").read_text()[-2000:]
    assert data is not None, "kube-root-ca.crt was not published within 90 s"
    assert data.strip() == (plane.pki / "ca.crt").read_text().strip()
