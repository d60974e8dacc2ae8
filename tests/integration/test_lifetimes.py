"""A month in half an hour: every lifetime scaled down, nobody touching anything.

A 3-node HA OpenBao; a control plane (etcd, kube-apiserver, kube-controller-manager without
csrsigning); `vaultk8s agent` for cp-1, worker-1 and worker-2, each enrolled once with a
`node credentials` secret_id that expires a minute later; `vaultk8s signer` in front of a real
kubelet (worker-1). Leaves are 10 minutes (the shortest a cluster file allows), enrolment
credentials and Vault tokens a minute or two, so the run passes several of each. The signer logs
in through the JWT method with a projected-token stand-in (a TokenRequest token, audience vaultk8s,
10 minutes, replaced every 8 as the kubelet would). Watched the whole time, every second or so:
  - no certificate on disk (every node's pki/, the kubelet's own) is ever past its not_after;
  - no agent's or the signer's /healthz answers 503;
  - an etcdctl mTLS loop on the agents' files (apiserver-etcd-client against cp-1's etcd) never fails.
Afterwards: every agent renewed at least twice after its enrolment credential expired, and the
kubelet's client and serving certificates rotated through the signer.

`test_lifetimes_short` runs in CI (about 15 minutes). `test_soak` (`python3 -m pytest -m soak`, 35
minutes) adds one active-node kill, a `ca rotate` of kubernetes-ca and an `sa rotate` cycle.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from cryptography import x509

from tests.helpers.ports import find_free_port
from tests.helpers.agent import start_agent, stop_agent
from tests.helpers.cluster import run_cli
from tests.helpers.kube import running_control_plane, stop_process
from tests.helpers.kubelet import (KubeletNode, apply_bootstrap_rbac, bootstrap_kubeconfig, kubelet_prereqs,
                                   start_signer, token_minter_kubeconfig, write_projected_token)
from tests.helpers.redacted import RedactedEnv
from vaultk8s import catalog
from vaultk8s.ops.renew import agent_renews

pytestmark = pytest.mark.integration

NODES = ("cp-1", "worker-1", "worker-2")
KUBELET_NODE, KUBELET_IP = "worker-1", "127.0.1.1"
ENROLMENT_TTL = "1m"
VAULT_BACKDATE = timedelta(seconds=30)
RENEWAL_GRACE_MIN = 4  # most the watch may run past `minutes` for the second renewal (see run_lifetimes)


@dataclass
class Watch:
    """Samples taken in the background; each list holds one line per problem seen."""

    expired: list[str] = field(default_factory=list)
    unhealthy: list[str] = field(default_factory=list)
    etcd_failures: list[str] = field(default_factory=list)
    etcd_requests: int = 0
    least_margin_s: float = float("inf")
    event_errors: list[str] = field(default_factory=list)
    issued: dict[str, dict[int, datetime]] = field(default_factory=dict)  # file -> serial -> not_before
    stop: threading.Event = field(default_factory=threading.Event)


# People's certificates (admin, super-admin) are on no node's credential: `vaultk8s bootstrap`, run
# by a person, renews them, so nothing here does.
PEOPLES = {spec.cert_file for spec in catalog.CERTS if not agent_renews(spec)}


def _certificates(roots: list[tuple[Path, str]]) -> list[Path]:
    """The certificate files agents and kubelets keep fresh: every *.crt a node's pki/ shows (not the
    ..data copies behind it) but people's, and the kubelet's *-current.pem (it keeps the older ones
    it rotated away from)."""
    return [path for root, pattern in roots for path in root.rglob(pattern)
            if path.is_file() and path.name not in PEOPLES
            and not any(part.startswith("..") for part in path.relative_to(root).parts)]


def _watch_expiry(watch: Watch, roots: list[tuple[Path, str]]) -> None:
    while not watch.stop.wait(2):
        now = datetime.now(timezone.utc)
        for path in _certificates(roots):
            try:
                certs = x509.load_pem_x509_certificates(path.read_bytes())
            except (OSError, ValueError):
                continue  # a key-and-cert .pem mid-swap; the next pass reads it again
            for cert in certs[:1]:  # the leaf; bundles hold CAs that outlive the run
                watch.issued.setdefault(str(path), {})[cert.serial_number] = cert.not_valid_before_utc
                margin = (cert.not_valid_after_utc - now).total_seconds()
                watch.least_margin_s = min(watch.least_margin_s, margin)
                if margin <= 0:
                    watch.expired.append(f"{path} expired at {cert.not_valid_after_utc:%H:%M:%S}")


def _watch_health(watch: Watch, ports: dict[str, int]) -> None:
    while not watch.stop.wait(1):
        for name, port in ports.items():
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            except requests.RequestException:
                continue  # not listening (yet): the agent-alive checks catch a dead agent
            if answer.status_code == 503:
                watch.unhealthy.append(f"{datetime.now(timezone.utc):%H:%M:%S} {name}: {answer.text.strip()[:200]}")


def _etcd_loop(watch: Watch, pki: Path, port: int) -> None:
    etcdctl = shutil.which("etcdctl")
    env = {**os.environ, "ETCDCTL_API": "3"}
    while not watch.stop.wait(1):
        done = subprocess.run(
            [etcdctl, f"--endpoints=https://127.0.0.1:{port}", f"--cacert={pki / 'etcd/ca.crt'}",
             f"--cert={pki / 'apiserver-etcd-client.crt'}", f"--key={pki / 'apiserver-etcd-client.key'}",
             "--command-timeout=10s", "endpoint", "health"],
            capture_output=True, text=True, timeout=30, env=env)
        watch.etcd_requests += 1
        if done.returncode != 0:
            watch.etcd_failures.append(f"{datetime.now(timezone.utc):%H:%M:%S} {done.stderr.strip()[-300:]}")


def _refresh_projected_token(watch: Watch, plane, path: Path, minter: Path) -> None:
    """The kubelet's job for a projected token of 10 minutes: a new one at 80% of its life."""
    while not watch.stop.wait(8 * 60):
        try:
            write_projected_token(plane, path, kubeconfig=minter)
        except AssertionError as err:  # kubectl failed (e.g. the API server restarting): next time
            watch.event_errors.append(f"projected token refresh: {err}"[:500])


def _threads(watch: Watch, roots: list[tuple[Path, str]], ports: dict[str, int], plane,
             jwt_file: Path) -> list[threading.Thread]:
    threads = [threading.Thread(target=_watch_expiry, args=(watch, roots), daemon=True),
               threading.Thread(target=_refresh_projected_token,
                                args=(watch, plane, jwt_file, token_minter_kubeconfig(plane, jwt_file.with_name("minter.conf"))),
                                daemon=True),
               threading.Thread(target=_watch_health, args=(watch, ports), daemon=True),
               threading.Thread(target=_etcd_loop, args=(watch, plane.pki, plane.etcd_ports[0]), daemon=True)]
    for thread in threads:
        thread.start()
    return threads


def _renewed_after(watch: Watch, path: Path, since: datetime) -> int:
    """How many certificates seen in this file were issued after `since`. Vault backdates notBefore
    by 30 s (a role's not_before_duration), so a renewal 28 s after `since` has a notBefore before it."""
    seen = list(watch.issued.get(str(path), {}).values())  # one copy: _watch_expiry adds while the loop asks
    return sum(nb + VAULT_BACKDATE > since for nb in seen)


def run_lifetimes(openbao_ha, tmp_path: Path, *, minutes: float, leaf_ttl: str, events) -> Watch:
    kubelet_prereqs()
    admin = RedactedEnv(openbao_ha.env_for(openbao_ha.standby()))
    prefix = f"life{secrets.token_hex(3)}/"
    # bind_cidrs off: the agents reach Vault from 127.0.0.1, not from their nodes' 127.0.1.N
    # (tests/integration/test_node_identity.py proves the CIDR-bound certificate login).
    policy = {"secret_id_ttl": ENROLMENT_TTL, "token_ttl": "1m", "token_max_ttl": "2m", "bind_cidrs": False}
    watch = Watch()
    with running_control_plane(tmp_path, admin, prefix, workers=2, leaf_ttl=leaf_ttl, policy=policy) as plane:
        plane.start_controller_manager()
        apply_bootstrap_rbac(plane)
        jwt_file, signer_port = tmp_path / "signer-token", find_free_port()
        signer = start_signer(plane, admin, tmp_path, "--metrics-addr", f"127.0.0.1:{signer_port}", jwt_file=jwt_file)
        node = KubeletNode(tmp_path / "kubelet", plane, KUBELET_NODE, KUBELET_IP)
        agents, ports, logs = {}, {"signer": signer_port}, {}
        no_token = RedactedEnv({k: v for k, v in admin.items() if k != "VAULT_TOKEN"})
        try:
            for name in NODES:
                creds = tmp_path / f"creds-{name}"
                run_cli("node", "credentials", "--config", str(plane.cluster_file), "--node", name,
                        "--out", str(creds), env=admin, check=True)
                ports[name], logs[name] = find_free_port(), tmp_path / f"agent-{name}.log"
                agents[name] = start_agent(no_token, "-c", str(plane.cluster_file), "--node", name,
                                           "--out", str(plane.out), "--credentials", str(creds),
                                           "--metrics-port", str(ports[name]), log=logs[name])
            enrolment_over = datetime.now(timezone.utc) + timedelta(minutes=1)
            node.start(bootstrap_kubeconfig(plane, tmp_path / "bootstrap-kubelet.conf"))
            first_client = node.wait_client_cert(timeout=120)
            node.wait_registered(timeout=120)
            node.patch_addresses()
            first_serving = node.wait_serving_cert(timeout=120)
            threads = _threads(watch, [(plane.out, "*.crt"), (node.cert_dir, "*-current.pem")], ports, plane,
                               jwt_file)
            started = time.monotonic()
            happenings = threading.Thread(target=_guarded, args=(watch, events, plane, openbao_ha, admin, started),
                                          daemon=True)
            happenings.start()
            # The watch lasts `minutes`, then until each agent renewed twice after its enrolment
            # expired: a first renewal spread to just before that expiry puts the second one after it
            # a full renewal period (~6.7 min of a 10m leaf) later than one spread just after it.
            leaves = {name: plane.out / name / "pki" / ("apiserver.crt" if name == "cp-1" else "kubelet-client.crt")
                      for name in NODES}  # one file per node stands for its leaves, all on one schedule
            until, latest = started + minutes * 60, started + (minutes + RENEWAL_GRACE_MIN) * 60
            while time.monotonic() < until or (time.monotonic() < latest and not all(
                    _renewed_after(watch, leaf, enrolment_over) >= 2 for leaf in leaves.values())):
                for name, proc in agents.items():
                    assert proc.poll() is None, f"agent {name} exited: {logs[name].read_text()[-2000:]}"
                assert signer.proc.poll() is None, signer.text()[-2000:]
                time.sleep(5)
            happenings.join(timeout=600)
            assert not watch.event_errors, watch.event_errors
            watch.stop.set()
            for thread in threads:
                thread.join(timeout=40)
            assert datetime.now(timezone.utc) > enrolment_over
            node.wait_client_cert(timeout=60, other_than=first_client.serial_number)
            node.wait_serving_cert(timeout=60, other_than=first_serving.serial_number)
            for name, leaf in leaves.items():
                assert _renewed_after(watch, leaf, enrolment_over) >= 2, (
                    f"{name}: renewals after enrolment expired: {_renewed_after(watch, leaf, enrolment_over)}; "
                    + logs[name].read_text(errors="replace")[-1500:])
            print(f"[lifetimes] {minutes} min: etcd requests {watch.etcd_requests}, least margin to an "
                  f"expiry {watch.least_margin_s:.0f}s")
        finally:
            watch.stop.set()
            for proc in agents.values():
                stop_agent(proc)
            node.cleanup()
            signer.stop()
    assert not watch.expired, watch.expired[:5]
    assert not watch.unhealthy, watch.unhealthy[:5]
    assert not watch.etcd_failures, watch.etcd_failures[:5]
    assert watch.etcd_requests > minutes * 30
    return watch


def _guarded(watch: Watch, events, *args) -> None:
    try:
        events(*args)
    except BaseException as err:  # noqa: BLE001 - reported by the main thread
        watch.event_errors.append(f"{type(err).__name__}: {err}"[:2000])


def _no_events(plane, openbao_ha, admin, started) -> None:
    pass


def _at(started: float, minute: float) -> None:
    time.sleep(max(0.0, started + minute * 60 - time.monotonic()))


def _month_of_events(plane, openbao_ha, admin, started) -> None:
    """What a month brings, on the soak's clock; the operator only runs the rotation commands and the
    restarts docs/service-account.md names for sa.key/sa.pub."""
    cluster, out = str(plane.cluster_file), str(plane.out)
    _at(started, 4)
    openbao_ha.kill(openbao_ha.active())
    _at(started, 5)
    openbao_ha.heal()
    for minute, phase in ((7, "stage"), (8, "switch")):
        _at(started, minute)
        run_cli("ca", "rotate", "--config", cluster, "--out", out, "--ca", "kubernetes-ca", "--phase", phase,
                env=admin, check=True)
    for minute, phase in ((12, "stage"), (14, "promote")):
        _at(started, minute)
        run_cli("sa", "rotate", "--config", cluster, "--out", out, "--phase", phase, env=admin, check=True)
        plane.restart_apiserver()  # kube-apiserver and kube-controller-manager read sa.key/sa.pub at start
        for proc in plane.controller_managers:
            stop_process(proc)
        plane.controller_managers.clear()
        plane.start_controller_manager()


@pytest.mark.timeout(1800)
def test_lifetimes_short(openbao_ha, tmp_path):
    """CI's shortened run: 10m leaves (the shortest a cluster file allows), watched for 13 minutes
    (up to 4 more for the renewals): every agent renews twice after its 1m enrolment credential
    expired, the kubelet rotates once."""
    run_lifetimes(openbao_ha, tmp_path, minutes=13, leaf_ttl="10m", events=_no_events)


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_soak(openbao_ha, tmp_path):
    """35 minutes, with an active-node kill, `ca rotate` stage and switch of kubernetes-ca, and `sa
    rotate` stage and promote; the retire phases are left out (see docs/identity.md, the soak)."""
    run_lifetimes(openbao_ha, tmp_path, minutes=35, leaf_ttl="10m", events=_month_of_events)
