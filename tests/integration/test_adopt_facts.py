"""What adopting a running kubeadm cluster depends on, measured with the real binaries (issue 18).

Each test starts its own kubeadm cluster (tests/helpers/kubeadm_cluster.py), changes files the way
the adoption would, and checks what the components do, with request loops counting failures.
docs/adopt-facts.md states the facts and names the test behind each. Set VAULTK8S_FACTS_OUT to a
folder to get each test's numbers as JSON (the docs' figures come from such runs).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.helpers.kubeadm_cluster import (HttpsProbe, ProbeError, RequestLoop, cert_pem, fingerprint, issue,
                                           kubeadm_cluster, kubeconfig_credentials, key_pem, load_pair, mint_token,
                                           new_ca, new_key, request_loops, same_names_as, served_certificate,
                                           standard_loops)
from vaultk8s.store.atomic import PayloadDir, public, secret

# Measurements, not regressions: ten clusters take ~6 minutes, so they run only when asked
# (the adoption itself is proven by test_adopt.py on every run).
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not os.environ.get("VAULTK8S_ADOPT_FACTS"),
                                 reason="the measurements behind docs/adopt-facts.md: set VAULTK8S_ADOPT_FACTS=1")]


def record(name: str, **facts: Any) -> None:
    folder = os.environ.get("VAULTK8S_FACTS_OUT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(facts, indent=2, sort_keys=True, default=str) + "\n")


def poll(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> float | None:
    """Seconds until check() is true (exceptions count as false), or None after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return round(time.monotonic() - started, 3)
        except (OSError, ssl.SSLError, ProbeError):
            pass
        time.sleep(interval)
    return None


def served(plane) -> str:
    return fingerprint(served_certificate("127.0.0.1", plane.port))


def no_failures(*loops: RequestLoop) -> dict[str, Any]:
    summaries = [loop.stop() for loop in loops]
    for summary in summaries:
        assert summary.failed == 0, str(summary)
        assert summary.requests > 0
    return {s.name: {"requests": s.requests, "failed": s.failed, "slowest": s.max_latency} for s in summaries}


def etcd_read_loop(plane, interval: float = 0.2) -> RequestLoop:
    """admin.conf reading one object from etcd (a GET without resourceVersion is a quorum read)."""
    probe = HttpsProbe.from_kubeconfig(plane.admin_kubeconfig, path="/api/v1/namespaces/default/serviceaccounts/adopt-probe")
    return RequestLoop("etcd read", probe, interval)


def new_apiserver_pair(plane) -> tuple[x509.Certificate, Any]:
    ca_cert, ca_key = load_pair(plane.pki, "ca")
    return issue(ca_cert, ca_key, "kube-apiserver", server=True, kind="rsa",
                 **same_names_as(load_pair(plane.pki, "apiserver")[0]))


def status_of(url: str, ca_pem: bytes, cert: x509.Certificate, key, headers: dict[str, str] | None = None):
    """A call returning the HTTP status of GET /api with this client certificate (401: not authenticated)."""
    seen: list[int] = []
    probe = HttpsProbe(url, ca_pem, cert_pem=cert_pem(cert), key_pem=key_pem(key),
                       expect=lambda status, body: seen.append(status))

    def call() -> int:
        seen.clear()
        if headers:
            import http.client
            conn = http.client.HTTPSConnection(probe.host, probe.port, context=probe.context, timeout=5)
            try:
                conn.request("GET", "/api", headers=headers)
                return conn.getresponse().status
            finally:
                conn.close()
        probe()
        return seen[0]

    return call


# --- (a) kube-apiserver's serving certificate ------------------------------------------------------

def test_a_apiserver_serves_a_new_certificate_after_the_two_step_payload_conversion(tmp_path):
    """Plain kubeadm files -> `..data` symlinks with the same content (PayloadDir's first version) ->
    a `..data` swap to a new apiserver.crt/key from the same CA: served without a restart, no failed
    request through admin.conf or the ServiceAccount token."""
    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        admin, sa = standard_loops(plane, token, interval=0.1)
        etcd = etcd_read_loop(plane, 0.2)
        pid = plane.apiserver.pid
        pki = PayloadDir(plane.pki)
        original = served(plane)
        with request_loops(admin, sa, etcd):
            admin.wait_requests(10)
            assert pki.update({})  # step 1: the same content, now behind ..data
            assert (plane.pki / "..data").is_symlink() and (plane.pki / "apiserver.crt").is_symlink()
            assert (plane.pki / "etcd").is_symlink()
            time.sleep(5)
            assert served(plane) == original
            new_cert, new_key = new_apiserver_pair(plane)
            pki.update({"apiserver.crt": public(cert_pem(new_cert)), "apiserver.key": secret(key_pem(new_key))})
            seconds = poll(lambda: served(plane) == fingerprint(new_cert), timeout=90)
            assert seconds is not None, "the new serving certificate was not served within 90 s"
            time.sleep(2)
            loops = no_failures(admin, sa, etcd)
        assert plane.apiserver.pid == pid and plane.apiserver.poll() is None
        assert [d for _, d in admin.changes] == [original, fingerprint(new_cert)]
        record("a_serving_cert", seconds_to_serve_new=seconds, loops=loops)


def test_a2_one_step_conversion_with_new_content(tmp_path):
    """The one-step alternative: PayloadDir's first update already carries the new cert/key, so the
    plain apiserver.key is replaced (by a link to the new key) before apiserver.crt. What does the
    API server do? (It loads both files together and refuses a pair that does not match.)"""
    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        admin, sa = standard_loops(plane, token, interval=0.1)
        original = served(plane)
        with request_loops(admin, sa):
            admin.wait_requests(10)
            new_cert, new_key = new_apiserver_pair(plane)
            PayloadDir(plane.pki).update({"apiserver.crt": public(cert_pem(new_cert)),
                                          "apiserver.key": secret(key_pem(new_key))})
            seconds = poll(lambda: served(plane) == fingerprint(new_cert), timeout=90)
            time.sleep(2)
            summaries = [admin.stop(), sa.stop()]
        log = plane.log("kube-apiserver").read_text(errors="replace")
        mismatch = [line for line in log.splitlines() if "does not match" in line or "private key" in line.lower()]
        record("a2_one_step", seconds_to_serve_new=seconds, original=original,
               loops={s.name: {"requests": s.requests, "failed": s.failed, "errors": [f.error for f in s.failures]}
                      for s in summaries}, log_lines=mismatch[:5])
        assert seconds is not None


# --- (b) kube-apiserver's client CA bundles ----------------------------------------------------------

def test_b_apiserver_reloads_client_ca_and_requestheader_ca_behind_data_links(tmp_path):
    """ca.crt and front-proxy-ca.crt become `..data` links (same content), then each bundle gains a
    second CA: a client certificate of the new kubernetes CA, and a front-proxy-client certificate of
    the new front-proxy CA, authenticate without a restart."""
    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        admin, sa = standard_loops(plane, token, interval=0.1)
        ca_pem = kubeconfig_credentials(plane.admin_kubeconfig)["ca"]
        pid = plane.apiserver.pid
        pki = PayloadDir(plane.pki)
        second, second_key = new_ca("kubernetes", kind="ec")
        user, user_key = issue(second, second_key, "adopt-probe-user", client=True)
        fp, fp_key = new_ca("front-proxy-ca", kind="ec")
        proxy, proxy_key = issue(fp, fp_key, "front-proxy-client", client=True)
        direct = status_of(plane.url, ca_pem, user, user_key)
        proxied = status_of(plane.url, ca_pem, proxy, proxy_key,
                            headers={"X-Remote-User": "adopt-proxied-user", "X-Remote-Group": "adopt-group"})
        facts: dict[str, Any] = {}
        with request_loops(admin, sa):
            admin.wait_requests(10)
            assert direct() == 401 and proxied() == 401
            assert pki.update({})  # same content behind ..data
            time.sleep(3)
            assert direct() == 401 and proxied() == 401
            bundle = (plane.pki / "ca.crt").read_bytes() + cert_pem(second)
            pki.update({"ca.crt": public(bundle)})
            facts["client_ca_seconds"] = poll(lambda: direct() == 200, timeout=90)
            fp_bundle = (plane.pki / "front-proxy-ca.crt").read_bytes() + cert_pem(fp)
            pki.update({"front-proxy-ca.crt": public(fp_bundle)})
            facts["requestheader_ca_seconds"] = poll(lambda: proxied() == 200, timeout=90)
            time.sleep(1)
            facts["loops"] = no_failures(admin, sa)
        assert facts["client_ca_seconds"] is not None and facts["requestheader_ca_seconds"] is not None, facts
        assert plane.apiserver.pid == pid and plane.apiserver.poll() is None
        record("b_client_ca", **facts)


# --- (c) etcd 3.4 -----------------------------------------------------------------------------------

def etcd_version(plane, cert: x509.Certificate, key, ca_pem: bytes | None = None) -> int:
    """GET /version on etcd's client port over mTLS with this client certificate; the HTTP status
    (an exception when etcd refuses the certificate)."""
    ca = ca_pem or (plane.pki / "etcd/ca.crt").read_bytes()
    probe = HttpsProbe(f"https://127.0.0.1:{plane.etcd_ports[0]}", ca, cert_pem=cert_pem(cert), key_pem=key_pem(key),
                       path="/version")
    probe()
    return 200


def etcd_accepts(plane, cert, key, ca_pem=None) -> bool:
    try:
        return etcd_version(plane, cert, key, ca_pem) == 200
    except ProbeError:
        return False


def etcd_served(plane) -> str:
    return fingerprint(served_certificate("127.0.0.1", plane.etcd_ports[0]))


def wait_etcd_backed(plane, timeout: float = 60) -> float | None:
    probe = HttpsProbe.from_kubeconfig(plane.admin_kubeconfig, path="/api/v1/namespaces/default/serviceaccounts/adopt-probe")
    return poll(lambda: probe() is not None, timeout, interval=0.1)


def test_c_etcd_reloads_its_serving_certificate_but_reads_its_trusted_ca_only_at_start(tmp_path):
    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        admin, sa = standard_loops(plane, token, interval=0.2)
        reads = etcd_read_loop(plane, 0.2)
        pki = PayloadDir(plane.pki)
        etcd_ca, etcd_ca_key = load_pair(plane.pki, "etcd/ca")
        health = load_pair(plane.pki, "etcd/healthcheck-client")
        facts: dict[str, Any] = {}
        with request_loops(admin, sa, reads):
            admin.wait_requests(5)
            assert pki.update({})  # pki/etcd becomes a link into ..data
            assert etcd_accepts(plane, *health)
            old_server = load_pair(plane.pki, "etcd/server")[0]
            assert etcd_served(plane) == fingerprint(old_server)  # so the poll below sees a change
            server, server_key = issue(etcd_ca, etcd_ca_key, "cp-1", server=True, client=True, kind="rsa",
                                       **same_names_as(old_server))
            pki.update({"etcd/server.crt": public(cert_pem(server)), "etcd/server.key": secret(key_pem(server_key))})
            facts["serving_cert_seconds"] = poll(lambda: etcd_served(plane) == fingerprint(server), timeout=30)
            time.sleep(1)
            facts["loops_serving_swap"] = no_failures(admin, sa, reads)

            # A second etcd CA in the trusted bundle: refused until etcd restarts.
            new, new_key = new_ca("etcd-ca", kind="ec")
            client, client_key = issue(new, new_key, "adopt-probe-etcd-client", client=True)
            assert not etcd_accepts(plane, client, client_key)
            pki.update({"etcd/ca.crt": public(cert_pem(etcd_ca) + cert_pem(new))})
            time.sleep(10)
            facts["new_ca_accepted_before_restart"] = etcd_accepts(plane, client, client_key)
            assert etcd_accepts(plane, *health)
            reads2 = etcd_read_loop(plane, 0.1).start()
            api2 = standard_loops(plane, token, interval=0.1)
            for loop in api2:
                loop.start()
            stopped = time.monotonic()
            plane.restart_etcd()
            facts["accepted_after_restart_seconds"] = poll(lambda: etcd_accepts(plane, client, client_key), timeout=60)
            facts["apiserver_etcd_back_seconds"] = wait_etcd_backed(plane)
            facts["restart_total_seconds"] = round(time.monotonic() - stopped, 2)
            time.sleep(2)
            summaries = [reads2.stop(), *(loop.stop() for loop in api2)]
        facts["loops_during_etcd_restart"] = {s.name: {"requests": s.requests, "failed": s.failed,
                                                       "slowest": s.max_latency,
                                                       "first_errors": [f.error[:160] for f in s.failures[:2]]}
                                              for s in summaries}
        record("c_etcd", **facts)
        assert facts["serving_cert_seconds"] is not None
        assert facts["new_ca_accepted_before_restart"] is False
        assert facts["accepted_after_restart_seconds"] is not None


# --- (d) kube-apiserver's etcd client ----------------------------------------------------------------

def test_d_apiserver_etcd_client_rereads_its_cert_but_not_its_ca(tmp_path):
    """etcd trusts old + new etcd CA (restarted); apiserver-etcd-client.crt/key become a new-CA
    certificate; etcd then trusts the new CA alone (restarted): the API server keeps working only if
    it presents the new certificate on its new connection. Then etcd serves a new-CA certificate:
    the API server, which read --etcd-cafile (old CA) at start, must refuse it until restarted."""
    with kubeadm_cluster(tmp_path) as plane:
        mint_token(plane)
        pki = PayloadDir(plane.pki)
        assert pki.update({})
        old_ca, old_ca_key = load_pair(plane.pki, "etcd/ca")
        new, new_key = new_ca("etcd-ca", kind="ec")
        facts: dict[str, Any] = {}
        pid = plane.apiserver.pid

        pki.update({"etcd/ca.crt": public(cert_pem(old_ca) + cert_pem(new))})
        plane.restart_etcd()
        facts["back_after_trusting_both"] = wait_etcd_backed(plane)

        client, client_key = issue(new, new_key, "kube-apiserver-etcd-client", client=True)
        pki.update({"apiserver-etcd-client.crt": public(cert_pem(client)),
                    "apiserver-etcd-client.key": secret(key_pem(client_key))})
        time.sleep(2)
        pki.update({"etcd/ca.crt": public(cert_pem(new))})  # etcd: new client CA only (its server cert: old CA)
        plane.restart_etcd()
        old_client = load_pair(plane.pki, "etcd/healthcheck-client")
        facts["old_ca_client_refused"] = not etcd_accepts(plane, *old_client, ca_pem=cert_pem(old_ca))
        facts["back_with_new_client_cert_seconds"] = wait_etcd_backed(plane, timeout=60)

        # etcd now serves a certificate of the new CA; the bundle file holds both CAs.
        old_server = load_pair(plane.pki, "etcd/server")[0]
        server, server_key = issue(new, new_key, "cp-1", server=True, client=True, **same_names_as(old_server))
        pki.update({"etcd/ca.crt": public(cert_pem(old_ca) + cert_pem(new)),
                    "etcd/server.crt": public(cert_pem(server)), "etcd/server.key": secret(key_pem(server_key))})
        plane.restart_etcd()  # the API server must open a new connection
        facts["back_with_new_ca_server_cert_seconds"] = wait_etcd_backed(plane, timeout=20)
        log = plane.log("kube-apiserver").read_text(errors="replace")
        facts["apiserver_log"] = [line[-220:] for line in log.splitlines() if "unknown authority" in line][:2]
        assert plane.apiserver.pid == pid
        plane.restart_apiserver()
        facts["back_after_apiserver_restart_seconds"] = wait_etcd_backed(plane, timeout=60)
        record("d_apiserver_etcd_client", **facts)
        assert facts["back_with_new_client_cert_seconds"] is not None, facts
        assert facts["old_ca_client_refused"]
        assert facts["back_with_new_ca_server_cert_seconds"] is None, facts
        assert facts["back_after_apiserver_restart_seconds"] is not None


# --- (e), (f) kube-controller-manager ------------------------------------------------------------------

def sign_csr(plane, name: str, timeout: float = 30) -> x509.Certificate | None:
    """A kube-apiserver-client CSR, approved; the certificate the controller-manager signs, or None."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"adopt-{name}")]))
           .sign(new_key(), hashes.SHA256()))
    pem = base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode()
    plane.kubectl("apply", "-f", "-", input=(
        f"apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\n"
        f"spec: {{request: {pem}, signerName: kubernetes.io/kube-apiserver-client, usages: [client auth]}}\n"))
    plane.kubectl("certificate", "approve", name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        issued = plane.kubectl("get", "csr", name, "-o", "jsonpath={.status.certificate}").stdout.strip()
        if issued:
            return x509.load_pem_x509_certificate(base64.b64decode(issued))
        time.sleep(0.3)
    return None


def signer_of(cert: x509.Certificate | None, *cas: x509.Certificate) -> int | None:
    """Index of the CA in cas that signed cert (None: unsigned or none of them)."""
    if cert is None:
        return None
    for index, ca in enumerate(cas):
        try:
            cert.verify_directly_issued_by(ca)
            return index
        except Exception:  # noqa: BLE001 - InvalidSignature / ValueError
            continue
    return None


def legacy_token_kid(plane, sa_name: str, timeout: float = 30) -> tuple[str, str]:
    """Create a ServiceAccount; the controller-manager's tokens controller (1.24) makes its secret:
    (kid of the token's JWT header, token)."""
    plane.kubectl("create", "serviceaccount", sa_name, "-n", "default")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = plane.kubectl("get", "sa", sa_name, "-n", "default", "-o", "jsonpath={.secrets[*].name}").stdout.split()
        if names:
            data = plane.kubectl("get", "secret", names[0], "-n", "default", "-o", "jsonpath={.data.token}").stdout
            if data:
                token = base64.b64decode(data).decode()
                header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
                return header.get("kid", ""), token
        time.sleep(0.3)
    raise AssertionError(f"no token secret for {sa_name} within {timeout}s")


def root_ca_configmap(plane, namespace: str, timeout: float = 30) -> list[x509.Certificate]:
    plane.kubectl("create", "namespace", namespace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = plane.kubectl("get", "configmap", "kube-root-ca.crt", "-n", namespace, "-o", "jsonpath={.data.ca\\.crt}",
                            check=False)
        if got.returncode == 0 and got.stdout.strip():
            return x509.load_pem_x509_certificates(got.stdout.encode())
        time.sleep(0.3)
    raise AssertionError(f"no kube-root-ca.crt in {namespace} within {timeout}s")


def token_status(plane, token: str) -> int:
    seen: list[int] = []
    ca = kubeconfig_credentials(plane.admin_kubeconfig)["ca"]
    HttpsProbe(plane.url, ca, token=token, expect=lambda status, body: seen.append(status))()
    return seen[0]


def _pub(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def wait_exit(proc, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def test_e_controller_manager_csrsigning_refuses_a_ca_bundle_and_reads_sa_key_and_root_ca_at_start(tmp_path):
    """kube-controller-manager (kubeadm's flags, csrsigning from pki/ca.crt + ca.key) on `..data`
    links; then ca.crt becomes old + new CA (what `ca rotate --phase stage` writes) and sa.key a new
    key (sa.pub both): what it signs, which key its legacy tokens carry, what kube-root-ca.crt holds,
    before and after a restart."""
    from vaultk8s.plan.sa import key_id

    with kubeadm_cluster(tmp_path, controller_manager=True) as plane:
        pki = PayloadDir(plane.pki)
        assert pki.update({})
        old_ca = load_pair(plane.pki, "ca")[0]
        old_sa = serialization.load_pem_private_key((plane.pki / "sa.key").read_bytes(), None)
        new, _ = new_ca("kubernetes", kind="ec")
        new_sa = new_key("rsa")
        facts: dict[str, Any] = {"before": {"csr_signer": signer_of(sign_csr(plane, "before"), old_ca)}}
        kid, _ = legacy_token_kid(plane, "before")
        facts["before"]["legacy_token_key"] = "old" if kid == key_id(old_sa.public_key()) else kid

        pki.update({"ca.crt": public(cert_pem(old_ca) + cert_pem(new)),
                    "sa.key": secret(key_pem(new_sa)), "sa.pub": public(_pub(old_sa) + _pub(new_sa))})
        time.sleep(3)
        after: dict[str, Any] = {"csr_signed": sign_csr(plane, "after", timeout=15) is not None}
        log = plane.log("kube-controller-manager-0").read_text(errors="replace")
        after["csr_error"] = next((line.rsplit(": ", 1)[1] for line in log.splitlines()
                                   if "error auto signing csr" in line), None)
        kid, _ = legacy_token_kid(plane, "after")
        after["legacy_token_key"] = {key_id(old_sa.public_key()): "old", key_id(new_sa.public_key()): "new"}.get(kid, kid)
        after["root_ca_configmap_new_namespace"] = [signer_of(c, old_ca, new) for c in
                                                    root_ca_configmap(plane, "after-swap")]
        after["kcm_running"] = plane.controller_managers[0].poll() is None
        facts["after_change_no_restart"] = after

        plane.stop_controller_manager(plane.controller_managers[0])
        restarted = plane.start_controller_manager()  # the same kubeadm flags
        code = wait_exit(restarted, 40)
        log = plane.log("kube-controller-manager-1").read_text(errors="replace")
        fatal = next((line for line in log.splitlines() if line.startswith("F")), "")
        facts["restart_with_csrsigning"] = {"exit_code": code, "fatal": fatal.split("] ", 1)[-1][:90] + " ... " +
                                            fatal.rsplit(": ", 1)[-1]}

        plane.start_controller_manager(csrsigning=False)
        time.sleep(3)
        external: dict[str, Any] = {}
        kid, token = legacy_token_kid(plane, "restarted")
        external["legacy_token_key"] = {key_id(old_sa.public_key()): "old", key_id(new_sa.public_key()): "new"}.get(kid, kid)
        external["new_key_token_status_before_apiserver_restart"] = token_status(plane, token)
        external["root_ca_configmap_new_namespace"] = [signer_of(c, old_ca, new) for c in
                                                       root_ca_configmap(plane, "after-restart")]
        time.sleep(2)
        external["root_ca_configmap_earlier_namespace"] = [signer_of(c, old_ca, new) for c in x509.load_pem_x509_certificates(
            plane.kubectl("get", "configmap", "kube-root-ca.crt", "-n", "after-swap", "-o",
                          "jsonpath={.data.ca\\.crt}").stdout.encode())]
        plane.restart_apiserver()
        external["new_key_token_status_after_apiserver_restart"] = token_status(plane, token)
        facts["restart_without_csrsigning"] = external
        record("e_controller_manager", **facts)
        assert facts["before"] == {"csr_signer": 0, "legacy_token_key": "old"}
        assert after["csr_signed"] is False and after["kcm_running"] and after["legacy_token_key"] == "old"
        assert after["root_ca_configmap_new_namespace"] == [0]
        assert facts["restart_with_csrsigning"]["exit_code"] not in (None, 0)
        assert external["legacy_token_key"] == "new" and external["root_ca_configmap_new_namespace"] == [0, 1]
        assert external["new_key_token_status_before_apiserver_restart"] == 401
        assert external["new_key_token_status_after_apiserver_restart"] == 200


def test_e2_controller_manager_reloads_its_signing_pair_without_restart(tmp_path):
    """csrsigning from a separate one-certificate pair in the payload (csr-signing.crt/key, first the
    kubeadm CA's): swapped to another CA, the next CSR is signed by the new one without a restart."""
    with kubeadm_cluster(tmp_path) as plane:
        pki = PayloadDir(plane.pki)
        old_ca, old_key = load_pair(plane.pki, "ca")
        pki.update({"csr-signing.crt": public(cert_pem(old_ca)), "csr-signing.key": secret(key_pem(old_key))})
        plane.start_controller_manager(signing_pair=("csr-signing.crt", "csr-signing.key"))
        first = signer_of(sign_csr(plane, "first"), old_ca)
        new, new_key = new_ca("kubernetes", kind="ec")
        pki.update({"csr-signing.crt": public(cert_pem(new)), "csr-signing.key": secret(key_pem(new_key))})
        swapped = time.monotonic()
        seconds, index, signer = None, 0, None
        while time.monotonic() - swapped < 30:
            index += 1
            signer = signer_of(sign_csr(plane, f"after-{index}"), old_ca, new)
            if signer == 1:
                seconds = round(time.monotonic() - swapped, 2)
                break
        record("e2_signing_reload", first=first, new_ca_signs_after_seconds=seconds, csrs_tried=index)
        assert first == 0 and seconds is not None, (first, signer)
        assert plane.controller_managers[0].poll() is None


def test_f_ca_key_removed_under_a_running_controller_manager_with_csrsigning(tmp_path):
    """kubeadm's controller-manager (csrsigning from pki/ca.key) keeps running when ca.key leaves the
    payload; what it signs then, and what a restart with the same flags does (kubeadm's external-CA
    mode is the same flags without the signing files)."""
    with kubeadm_cluster(tmp_path, controller_manager=True) as plane:
        pki = PayloadDir(plane.pki)
        assert pki.update({})
        old_ca = load_pair(plane.pki, "ca")[0]
        facts: dict[str, Any] = {"before": signer_of(sign_csr(plane, "before"), old_ca)}
        pki.update({"ca.key": None})
        assert not (plane.pki / "ca.key").exists() and not list(plane.pki.glob("..*/ca.key"))
        time.sleep(5)
        running: dict[str, Any] = {"kcm_running": plane.controller_managers[0].poll() is None}
        running["csr_signer"] = signer_of(sign_csr(plane, "after-removal", timeout=15), old_ca)
        log = plane.log("kube-controller-manager-0").read_text(errors="replace")
        running["log"] = [line.split("] ", 1)[-1][:200] for line in log.splitlines()
                          if "ca.key" in line and line[:1] in "EW"][:3]
        facts["key_removed_running"] = running
        plane.stop_controller_manager(plane.controller_managers[0])
        again = plane.start_controller_manager()
        code = wait_exit(again, 40)
        log = plane.log("kube-controller-manager-1").read_text(errors="replace")
        fatal = next((line for line in log.splitlines() if line.startswith("F")), "")
        facts["restart_same_flags"] = {"exit_code": code, "fatal": fatal.split("] ", 1)[-1][:300]}
        external = plane.start_controller_manager(csrsigning=False)
        time.sleep(5)
        facts["restart_external_ca_mode_running"] = external.poll() is None
        facts["external_ca_mode_csr_signed"] = sign_csr(plane, "external", timeout=10) is not None
        record("f_ca_key_removed", **facts)
        assert facts["before"] == 0 and running["kcm_running"]
        assert facts["restart_external_ca_mode_running"] and not facts["external_ca_mode_csr_signed"]


# --- (g) adoption by hand with today's code: import, two-step conversion, in-place bootstrap ------------

def adopt_cluster_doc(prefix: str, port: int, key_type: str = "ec-p256") -> dict[str, Any]:
    """The cluster file that describes make_kubeadm_tree's tree (what `adopt --print-config` should give)."""
    return {
        "cluster": {"name": "kube", "endpoint": f"https://127.0.0.1:{port}", "service_cidr": "10.96.0.0/12",
                    "domain": "cluster.local", "apiserver_port": port},
        "pki": {"key_type": key_type, "leaf_ttl": "24h", "ca_ttl": "87600h"},
        "vault": {"mount_prefix": prefix},
        "nodes": {"control_plane": [{"name": "cp-1", "ips": ["192.0.2.10"], "sans": ["127.0.0.1", "localhost"]}],
                  "workers": []},
    }


def import_by_hand(vault_env: dict[str, str], prefix: str, pki: Path) -> dict[str, Any]:
    """What `vaultk8s adopt` would write, done with the raw API: each kubeadm CA (cert + key) imported
    as the mount's issuer `root` (key `root`) through issuers/import/bundle, and sa.key as the active
    key of the service-account key set in KV (plan/sa.py's document). Returns OpenBao's warnings."""
    from datetime import datetime, timezone

    from vaultk8s.plan import sa
    from vaultk8s.vault.gateway import make_client, settings_from_env

    client = make_client(settings_from_env(vault_env))
    warnings: dict[str, list[str]] = {}
    for mount, base in (("kubernetes-ca", "ca"), ("etcd-ca", "etcd/ca"), ("front-proxy-ca", "front-proxy-ca")):
        path = f"{prefix}{mount}"
        client.sys.enable_secrets_engine("pki", path=path, config={"max_lease_ttl": "87600h"})
        bundle = (pki / f"{base}.crt").read_text() + (pki / f"{base}.key").read_text()
        answer = client.adapter.post(f"/v1/{path}/issuers/import/bundle", json={"pem_bundle": bundle})
        data = answer["data"]
        assert len(data["imported_issuers"]) == 1 and len(data["imported_keys"]) == 1, data
        issuer, key = data["imported_issuers"][0], data["imported_keys"][0]
        # PATCH: a POST resets usage to the default, which includes crl-signing, and OpenBao refuses
        # crl-signing for kubeadm's CAs (their key usage lacks cRLSign).
        client.adapter.request("PATCH", f"/v1/{path}/issuer/{issuer}", json={"issuer_name": "root"},
                               headers={"Content-Type": "application/merge-patch+json"})
        client.adapter.post(f"/v1/{path}/key/{key}", json={"key_name": "root"})
        client.adapter.post(f"/v1/{path}/config/issuers", json={"default": issuer})
        warnings[mount] = [w[:160] for w in answer.get("warnings") or []]
    now = datetime.now(timezone.utc)
    private = serialization.load_pem_private_key((pki / "sa.key").read_bytes(), None)
    keys = sa.initial(sa.new_key(private, now), now)
    kv = f"{prefix}vaultk8s"
    client.sys.enable_secrets_engine("kv", path=kv, options={"version": "2"})
    client.secrets.kv.v2.update_metadata("kube/service-account", max_versions=sa.KV_MAX_VERSIONS, mount_point=kv)
    client.secrets.kv.v2.create_or_update_secret("kube/service-account", secret=sa.to_document(keys),
                                                 mount_point=kv, cas=0)
    return warnings


def compare_tree(before: dict[str, dict[str, Any]], pki: Path) -> dict[str, dict[str, Any]]:
    """Per leaf: the fields where vaultk8s's certificate differs from kubeadm's."""
    from tests.helpers.kubeadm_cluster import LEAF_FILES, cert_summary

    diffs = {}
    for base in LEAF_FILES:
        after = cert_summary(x509.load_pem_x509_certificates((pki / f"{base}.crt").read_bytes())[0])
        diffs[base] = {k: {"kubeadm": before[base][k], "vaultk8s": after[k]}
                       for k in after if after[k] != before[base][k]}
    return diffs


def kubeconfig_facts(path: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text())
    user = doc["users"][0]["user"]
    creds = kubeconfig_credentials(path)
    cert = x509.load_pem_x509_certificates(creds["cert"])[0] if creds["cert"] else None
    return {"server": doc["clusters"][0]["cluster"]["server"], "subject": cert.subject.rfc4514_string() if cert else None,
            "client_cert": "embedded" if "client-certificate-data" in user else user.get("client-certificate"),
            "ca": "embedded" if "certificate-authority-data" in doc["clusters"][0]["cluster"] else "file",
            "mode": oct(path.stat().st_mode & 0o777)}


def compare_kubeconfigs(before: dict[str, dict[str, Any]], node_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, old in before.items():
        new = kubeconfig_facts(node_dir / name)
        out[name] = {k: {"kubeadm": old[k], "vaultk8s": new[k]} for k in new if new[k] != old[k]}
    out["super-admin.conf"] = {"vaultk8s": kubeconfig_facts(node_dir / "super-admin.conf")}
    return out


def test_g_adoption_by_hand_then_in_place_bootstrap_keeps_every_request(vault_env, mount_prefix, tmp_path):
    """The whole adoption of issue 18 with today's pieces: import (raw API), PayloadDir's same-content
    first version, `vaultk8s bootstrap --out` over the running node's tree, the CA keys removed from
    the payload. Loops through kubeadm's admin.conf (as loaded before), the pre-adoption token, an
    etcd read, and kubectl on the tree's admin.conf file (re-read every call) count failures."""
    from tests.helpers.cluster import run_cli, write_cluster
    from tests.helpers.kubeadm_cluster import KUBECONFIGS, KubectlProbe, LEAF_FILES, cert_summary

    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        admin, sa = standard_loops(plane, token, interval=0.2)
        reads = etcd_read_loop(plane, 0.2)
        kubectl = RequestLoop("kubectl tree admin.conf", KubectlProbe(plane.admin_kubeconfig, home=plane.workdir), 0.5)
        before = {base: cert_summary(load_pair(plane.pki, base)[0]) for base in LEAF_FILES}
        kubeconfigs_before = {name: kubeconfig_facts(plane.node_dir / name) for name in KUBECONFIGS}
        cluster = write_cluster(tmp_path / "cluster.yaml", adopt_cluster_doc(mount_prefix, plane.port))
        facts: dict[str, Any] = {}
        pid = plane.apiserver.pid
        with request_loops(admin, sa, reads, kubectl):
            admin.wait_requests(5)
            facts["import_warnings"] = import_by_hand(vault_env, mount_prefix, plane.pki)
            assert PayloadDir(plane.pki).update({})  # step 1: same content behind ..data
            time.sleep(2)
            started = time.monotonic()
            result = run_cli("bootstrap", "--config", str(cluster), "--out", str(plane.out), env=vault_env)
            facts["bootstrap"] = {"rc": result.returncode, "seconds": round(time.monotonic() - started, 1),
                                  "stderr": result.stderr[-600:]}
            assert result.returncode == 0, result.stderr[-2000:]
            served_now = served_certificate("127.0.0.1", plane.port)
            facts["served_is_new_apiserver_crt"] = poll(
                lambda: served(plane) == fingerprint(load_pair(plane.pki, "apiserver")[0]), timeout=30)
            time.sleep(2)
            facts["ca_keys_after_bootstrap"] = sorted(k for k in ("ca.key", "etcd/ca.key", "front-proxy-ca.key")
                                                      if (plane.pki / k).exists())
            PayloadDir(plane.pki).update({"ca.key": None, "etcd/ca.key": None, "front-proxy-ca.key": None})
            time.sleep(2)
            facts["loops"] = {s.name: {"requests": s.requests, "failed": s.failed, "slowest": s.max_latency,
                                       "errors": [f.error[:200] for f in s.failures[:3]]}
                              for s in (admin.stop(), sa.stop(), reads.stop(), kubectl.stop())}
        facts["apiserver_restarted"] = plane.apiserver.pid != pid or plane.apiserver.poll() is not None
        facts["served_issuer"] = served_now.issuer.rfc4514_string()
        facts["differences"] = compare_tree(before, plane.pki)
        again = run_cli("bootstrap", "--config", str(cluster), "--out", str(plane.out), env=vault_env)
        facts["second_bootstrap"] = again.stdout.strip().splitlines()[-3:]
        # vaultk8s's admin.conf is O=kubeadm:cluster-admins: it needs rbac.yaml (applied with its super-admin.conf).
        new_admin = plane.kubectl("auth", "can-i", "delete", "secrets", "-A", check=False).stdout.strip()
        plane.kubectl("apply", "-f", str(plane.out / "rbac.yaml"), kubeconfig=plane.node_dir / "super-admin.conf")
        facts["new_admin_can_i_before_rbac"] = new_admin
        facts["new_admin_can_i_after_rbac"] = plane.kubectl("auth", "can-i", "delete", "secrets", "-A").stdout.strip()
        facts["kubeconfigs"] = compare_kubeconfigs(kubeconfigs_before, plane.node_dir)
        status = run_cli("ca", "status", "--config", str(cluster), "--out", str(plane.out), "--output", "json",
                         env=vault_env)
        facts["ca_status"] = [{"ca": c["ca"], "state": c["state"], "issuers": [(i["name"], i["role"], i["leaves"])
                                                                                for i in c["issuers"]]}
                              for c in json.loads(status.stdout)] if status.returncode == 0 else status.stderr[-300:]
        check = run_cli("certs", "check", "--out", str(plane.out), env=vault_env)
        facts["certs_check_rc"] = check.returncode
        facts["ca_keys_left"] = sorted(str(p.relative_to(plane.pki)) for p in plane.pki.rglob("*.key")
                                       if p.name == "ca.key" or p.name == "front-proxy-ca.key")
        record("g_adoption_by_hand", **facts)
        for name, loop in facts["loops"].items():
            assert loop["failed"] == 0, (name, loop)
        assert not facts["apiserver_restarted"] and facts["served_is_new_apiserver_crt"] is not None
        assert facts["ca_keys_left"] == []


def test_g2_ca_rotation_of_an_adopted_kubeadm_ca(vault_env, mount_prefix, tmp_path):
    """After the adoption of test_g, `ca rotate --ca kubernetes-ca` stage, switch, retire with today's
    code: the loops through kubeadm's admin.conf (trusting only kubeadm's CA) and the old token count
    failures through stage and switch; what retire does with an imported kubeadm CA is recorded."""
    from tests.helpers.cluster import run_cli, write_cluster

    with kubeadm_cluster(tmp_path) as plane:
        token = mint_token(plane)
        cluster = write_cluster(tmp_path / "cluster.yaml", adopt_cluster_doc(mount_prefix, plane.port))
        import_by_hand(vault_env, mount_prefix, plane.pki)
        assert PayloadDir(plane.pki).update({})
        run_cli("bootstrap", "--config", str(cluster), "--out", str(plane.out), env=vault_env, check=True)
        PayloadDir(plane.pki).update({"ca.key": None, "etcd/ca.key": None, "front-proxy-ca.key": None})
        admin, sa = standard_loops(plane, token, interval=0.2)
        facts: dict[str, Any] = {}
        with request_loops(admin, sa):
            admin.wait_requests(3)
            for phase in ("stage", "switch"):
                result = run_cli("ca", "rotate", "--config", str(cluster), "--out", str(plane.out),
                                 "--ca", "kubernetes-ca", "--phase", phase, env=vault_env)
                facts[phase] = {"rc": result.returncode, "stderr": result.stderr.strip()[-300:]}
                time.sleep(2)
            facts["loops_stage_switch"] = no_failures(admin, sa)
        retire = run_cli("ca", "rotate", "--config", str(cluster), "--out", str(plane.out),
                         "--ca", "kubernetes-ca", "--phase", "retire", env=vault_env)
        facts["retire"] = {"rc": retire.returncode, "stderr": retire.stderr.strip().splitlines()[-1:] if retire.stderr else []}
        record("g2_ca_rotation_adopted", **facts)
        assert facts["stage"]["rc"] == 0 and facts["switch"]["rc"] == 0, facts
