"""kubernetes-ca and front-proxy-ca rotation against a real kube-apiserver v1.24 that is never
restarted, while request loops run: kubectl with a kubeconfig saved before the rotation (old CA,
old client cert), kubectl with the live admin.conf, and front-proxy requests (X-Remote-User) with
the old and the live front-proxy-client certificate. kube-controller-manager runs throughout.

No request fails until retire; after it only the old-CA credentials fail, with 401. The
extension-apiserver-authentication ConfigMap keeps the old roots (the API server never removes
them); the runbook's kubectl cleanup is applied and checked.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers.kube import running_control_plane
from tests.helpers.nodes import run_cli
from vaultk8s import crypto

pytestmark = pytest.mark.integration

LOOP_LIMIT_SECONDS = 400
CAS = ("kubernetes-ca", "front-proxy-ca")
CM_KEYS = ("client-ca-file", "requestheader-client-ca-file")


class Loop(threading.Thread):
    """Calls probe() until stopped; records (phase, outcome) where outcome is "ok" or an error text."""

    def __init__(self, name: str, probe, pause: float):
        super().__init__(daemon=True, name=name)
        self.probe, self.pause = probe, pause
        self.phase = "start"
        self.results: list[tuple[str, str]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + LOOP_LIMIT_SECONDS
        while not self._halt.is_set() and time.monotonic() < deadline:
            phase = self.phase
            try:
                outcome = self.probe()
            except requests.RequestException as err:
                outcome = f"{type(err).__name__}: {err}"[:200]
            self.results.append((phase, outcome))
            self._halt.wait(self.pause)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)

    def outcomes(self, *phases: str) -> list[str]:
        return [o for p, o in self.results if p in phases]


def _kubectl_probe(plane, kubeconfig: Path):
    def probe() -> str:
        result = plane.kubectl("get", "--raw=/api/v1/namespaces/default/configmaps", kubeconfig=kubeconfig,
                               check=False, timeout=30)
        return "ok" if result.returncode == 0 else (result.stderr.strip()[-200:] or f"exit {result.returncode}")
    return probe


def _front_proxy_probe(plane, cert: tuple[Path, Path], ca_file: Path):
    url = f"{plane.url}/api/v1/namespaces/default/configmaps"

    def probe() -> str:
        response = requests.get(url, headers={"X-Remote-User": "alice"}, verify=str(ca_file), timeout=20,
                                cert=(str(cert[0]), str(cert[1])))
        return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"
    return probe


def _copy(src: Path, dst_dir: Path) -> Path:
    dst_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(src, dst_dir / src.name))


def _rotate(plane, env, ca: str, phase: str) -> None:
    run_cli(["ca", "rotate", "-c", str(plane.cluster_file), "-o", str(plane.out), "--ca", ca, "--phase", phase], env)


def _configmap_roots(plane) -> dict[str, set[str]]:
    data = json.loads(plane.kubectl("get", "configmap", "extension-apiserver-authentication", "-n", "kube-system",
                                    "-o", "json").stdout)["data"]
    return {k: {crypto.fingerprint(c) for c in crypto.load_certs(data[k].encode())} for k in CM_KEYS}


def _prune_configmap(plane, keep: dict[str, bytes]) -> None:
    """The runbook's cleanup: set both CA keys of the ConfigMap to the current bundles."""
    patch = {"data": {k: keep[k].decode() for k in CM_KEYS}}
    plane.kubectl("patch", "configmap", "extension-apiserver-authentication", "-n", "kube-system",
                  "--type=merge", "-p", json.dumps(patch), kubeconfig=plane.super_admin_kubeconfig)


def _wait_default_serviceaccount(plane, namespace: str, timeout: float = 90) -> None:
    """kube-controller-manager's serviceaccount controller makes it: proof that it still authenticates."""
    plane.kubectl("create", "namespace", namespace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if plane.kubectl("get", "serviceaccount", "default", "-n", namespace, check=False).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"no default ServiceAccount in {namespace} within {timeout}s: kube-controller-manager "
                         f"log: {plane.log('kube-controller-manager-1').read_text()[-1500:]}")


def test_kubernetes_and_front_proxy_ca_rotation_without_restart(openbao, tmp_path, mount_prefix):
    env = openbao.as_environ()
    with running_control_plane(tmp_path, env, mount_prefix, workers=1) as plane:
        pki, saved = plane.pki, tmp_path / "saved"
        plane.kubectl("create", "role", "cm-reader", "-n", "default", "--verb=list", "--resource=configmaps")
        plane.kubectl("create", "rolebinding", "alice-cm", "-n", "default", "--role=cm-reader", "--user=alice")
        old_kubeconfig = _copy(plane.admin_kubeconfig, saved)
        old_fp = (_copy(pki / "front-proxy-client.crt", saved), _copy(pki / "front-proxy-client.key", saved))
        old_ca = _copy(pki / "ca.crt", saved)
        old_roots = {k: (pki / f).read_bytes() for k, f in zip(CM_KEYS, ("ca.crt", "front-proxy-ca.crt"))}
        kcm = plane.start_controller_manager()
        loops = [
            Loop("old-kubeconfig", _kubectl_probe(plane, old_kubeconfig), 0.3),
            Loop("live-kubeconfig", _kubectl_probe(plane, plane.admin_kubeconfig), 0.3),
            Loop("old-front-proxy", _front_proxy_probe(plane, old_fp, old_ca), 0.2),
            Loop("live-front-proxy", _front_proxy_probe(plane, (pki / "front-proxy-client.crt",
                                                               pki / "front-proxy-client.key"), pki / "ca.crt"), 0.2),
        ]

        def phase(name: str) -> None:
            for loop in loops:
                loop.phase = name

        try:
            for loop in loops:
                loop.start()
            time.sleep(3)
            for step in ("stage", "switch"):
                phase(step)
                for ca in CAS:
                    _rotate(plane, env, ca, step)
                time.sleep(5)  # the API server reloads CA files and its serving cert within a second
                if step == "switch":
                    # client-go re-reads a kubeconfig's client-certificate files only every 5 minutes:
                    # restart the components on file-referenced certificates after switch (runbook).
                    kcm.terminate()
                    kcm.wait(timeout=30)
                    kcm = plane.start_controller_manager()
            phase("retire")
            for ca in CAS:
                _rotate(plane, env, ca, "retire")
            time.sleep(5)
            phase("after")
            time.sleep(5)
        finally:
            for loop in loops:
                loop.stop()
        report = {loop.name: {p: sum(1 for q, o in loop.results if q == p and o == "ok")
                              for p in ("start", "stage", "switch", "retire", "after")} for loop in loops}
        print(f"\nkube rotation loops, successes per phase: {report}")
        for loop in loops:
            failed = [o for o in loop.outcomes("start", "stage", "switch") if o != "ok"]
            assert failed == [], (loop.name, failed[:5])
            assert all(report[loop.name][p] > 0 for p in ("stage", "switch")), (loop.name, report[loop.name])
        for name in ("live-kubeconfig", "live-front-proxy"):
            loop = next(lp for lp in loops if lp.name == name)
            assert [o for o in loop.outcomes("retire", "after") if o != "ok"] == [], name
            assert report[name]["after"] > 0
        # After retire only the old-CA credentials fail, and they fail authentication (401), not TLS.
        old_kc = next(lp for lp in loops if lp.name == "old-kubeconfig").outcomes("after")
        assert old_kc and all("Unauthorized" in o for o in old_kc), old_kc[:3]
        old_fp_results = next(lp for lp in loops if lp.name == "old-front-proxy").outcomes("after")
        assert old_fp_results and all(o == "HTTP 401" for o in old_fp_results), old_fp_results[:3]

        assert kcm.poll() is None
        _wait_default_serviceaccount(plane, "after-retire")

        # The API server kept the old roots in the ConfigMap; the runbook's patch removes them.
        current = {k: (pki / f).read_bytes() for k, f in zip(CM_KEYS, ("ca.crt", "front-proxy-ca.crt"))}
        in_cm = _configmap_roots(plane)
        for key in CM_KEYS:
            old_fps = {crypto.fingerprint(c) for c in crypto.load_certs(old_roots[key])}
            assert old_fps <= in_cm[key], key  # measured: never removed by kube-apiserver
        _prune_configmap(plane, current)
        time.sleep(3)
        in_cm = _configmap_roots(plane)
        for key in CM_KEYS:
            assert in_cm[key] == {crypto.fingerprint(c) for c in crypto.load_certs(current[key])}, key


def _restart_etcd(plane) -> None:
    plane.etcd.terminate()
    plane.etcd.wait(timeout=30)
    plane.start_etcd()


def _write_succeeds(plane, name: str, timeout: float = 60) -> None:
    """A write through kube-apiserver to etcd, retried while etcd comes back (one member: it was down)."""
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        result = plane.kubectl("create", "configmap", name, "-n", "default", check=False)
        if result.returncode == 0:
            return
        last = result.stderr.strip()[-300:]
        time.sleep(1)
    raise AssertionError(f"kube-apiserver could not write to etcd within {timeout}s: {last}; "
                         f"etcd log: {plane.log('etcd').read_text()[-1500:]}")


def test_etcd_ca_rotation_keeps_kube_apiserver_without_restart(openbao, tmp_path, mount_prefix):
    """kube-apiserver reads --etcd-cafile once at start, yet needs no restart: etcd serves the new
    leaf + cross-signed chain, which the old root accepts, and the API server's etcd client loads
    its client certificate from the files on each new connection (measured here: after retire and
    etcd's restart, etcd trusts only the new root, and the same kube-apiserver process still writes)."""
    env = openbao.as_environ()
    with running_control_plane(tmp_path, env, mount_prefix, workers=0) as plane:
        apiserver_pid = plane.apiserver.pid
        _rotate(plane, env, "etcd-ca", "stage")
        _restart_etcd(plane)  # etcd reads --trusted-ca-file only at start
        _write_succeeds(plane, "after-stage")
        _rotate(plane, env, "etcd-ca", "switch")
        _restart_etcd(plane)  # new connections: the API server meets the new serving chain
        _write_succeeds(plane, "after-switch")
        _rotate(plane, env, "etcd-ca", "retire")
        _restart_etcd(plane)
        _write_succeeds(plane, "after-retire")
        assert plane.apiserver.pid == apiserver_pid and plane.apiserver.poll() is None
        assert len(crypto.load_certs((plane.pki / "etcd/ca.crt").read_bytes())) == 1
