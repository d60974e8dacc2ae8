"""The only module that talks to Kubernetes, through the official `kubernetes` client.

Objects travel as the API server's JSON (plain dicts, `_preload_content=False` and an undecoded
watch): the generated models re-encode `bytes` fields and would only add a second representation.
Every write carries the resourceVersion of the object it was decided on, so a stale decision fails
with KubeConflict instead of overwriting another writer's. Failures leave as KubeError, one line.
"""

from __future__ import annotations

import base64
import contextlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from vaultk8s.errors import KubeConflict, KubeError
from vaultk8s.plan.csr_review import CsrView

Obj = dict[str, Any]


def connect(kubeconfig: Path | None) -> client.ApiClient:
    """An API client from a kubeconfig file, or from the pod's service account when None."""
    try:
        if kubeconfig is not None:
            return config.new_client_from_config(str(kubeconfig))
        conf = client.Configuration()
        config.load_incluster_config(client_configuration=conf)
        return client.ApiClient(conf)
    except (ConfigException, OSError, TypeError, ValueError) as err:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config (no --kubeconfig given)"
        raise KubeError(f"cannot load {where}: {' '.join(str(err).split())[:200]}") from None


def view_of(csr: Obj) -> CsrView:
    spec, status = csr.get("spec") or {}, csr.get("status") or {}
    kinds = {c.get("type") for c in status.get("conditions") or [] if c.get("status", "True") == "True"}
    try:
        request = base64.b64decode(spec.get("request") or "")
    except ValueError:
        request = b""
    return CsrView(
        name=csr["metadata"]["name"], signer_name=spec.get("signerName", ""), username=spec.get("username", ""),
        groups=tuple(spec.get("groups") or ()), usages=tuple(spec.get("usages") or ()), request=request,
        expiration_seconds=spec.get("expirationSeconds"), approved="Approved" in kinds, denied="Denied" in kinds,
        failed="Failed" in kinds, issued=bool(status.get("certificate")),
    )


def _condition(kind: str, reason: str, message: str, now: datetime) -> Obj:
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": kind, "status": "True", "reason": reason, "message": message[:1000],
            "lastUpdateTime": stamp, "lastTransitionTime": stamp}


class KubeGateway:
    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client
        self.certs = client.CertificatesV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    # --- CertificateSigningRequests -------------------------------------------------------------

    def list_csrs(self) -> tuple[list[Obj], str]:
        """Every CSR and the list's resourceVersion (where a watch resumes)."""
        with _translate("list CertificateSigningRequests"):
            data = _json(self.certs.list_certificate_signing_request(_preload_content=False))
        return list(data.get("items") or []), data["metadata"]["resourceVersion"]

    def watch_csrs(self, resource_version: str, timeout_seconds: int) -> Iterator[tuple[str, Obj]]:
        """(event type, CSR) from resource_version on, for at most timeout_seconds."""
        stream = watch.Watch().stream(self.certs.list_certificate_signing_request, resource_version=resource_version,
                                      timeout_seconds=timeout_seconds, allow_watch_bookmarks=True, deserialize=False)
        with _translate("watch CertificateSigningRequests"):
            for event in stream:
                yield event["type"], event["object"]

    def read_csr(self, name: str) -> Obj | None:
        with _translate(f"read CertificateSigningRequest {name}"):
            return _read(lambda: self.certs.read_certificate_signing_request(name, _preload_content=False))

    def set_certificate(self, csr: Obj, bundle: bytes) -> None:
        body = _with_status(csr, certificate=base64.b64encode(bundle).decode())
        with _translate(f"write the certificate of {csr['metadata']['name']}"):
            _json(self.certs.replace_certificate_signing_request_status(csr["metadata"]["name"], body,
                                                                        _preload_content=False))

    def add_condition(self, csr: Obj, kind: str, reason: str, message: str, now: datetime) -> None:
        """Approved or Denied go through the approval subresource, Failed through status."""
        conditions = [*((csr.get("status") or {}).get("conditions") or []), _condition(kind, reason, message, now)]
        body = _with_status(csr, conditions=conditions)
        name = csr["metadata"]["name"]
        with _translate(f"set {kind} on {name}"):
            if kind == "Failed":
                _json(self.certs.replace_certificate_signing_request_status(name, body, _preload_content=False))
            else:
                _json(self.certs.replace_certificate_signing_request_approval(name, body, _preload_content=False))

    # --- Leases ---------------------------------------------------------------------------------

    def read_lease(self, namespace: str, name: str) -> Obj | None:
        with _translate(f"read Lease {namespace}/{name}"):
            return _read(lambda: self.coordination.read_namespaced_lease(name, namespace, _preload_content=False))

    def create_lease(self, namespace: str, name: str, spec: Obj) -> None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        with _translate(f"create Lease {namespace}/{name}"):
            _json(self.coordination.create_namespaced_lease(namespace, body, _preload_content=False))

    def replace_lease(self, lease: Obj, spec: Obj) -> None:
        """Write spec over the lease as read (its resourceVersion guards the write)."""
        meta = lease["metadata"]
        body = {**lease, "spec": spec}
        with _translate(f"update Lease {meta['namespace']}/{meta['name']}"):
            _json(self.coordination.replace_namespaced_lease(meta["name"], meta["namespace"], body, _preload_content=False))


def _with_status(csr: Obj, **fields: Any) -> Obj:
    return {**csr, "status": {**(csr.get("status") or {}), **fields}}


def _json(response: Any) -> Obj:
    """The body of an unpreloaded response. Every call reads it: only a response read to the end
    gives its connection back to the pool; else each call pays a new TLS handshake."""
    return json.loads(response.data)


def _read(call: Callable[[], Any]) -> Obj | None:
    """call()'s object, or None when the API server answers 404."""
    try:
        return _json(call())
    except ApiException as err:
        if err.status == 404:
            return None
        raise


@contextlib.contextmanager
def _translate(action: str) -> Iterator[None]:
    try:
        yield
    except ApiException as err:
        if err.status in (409, 410):
            raise KubeConflict(f"cannot {action}: it changed meanwhile ({err.status})") from None
        raise KubeError(f"cannot {action}: API server answered {err.status} {_reason(err)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise KubeError(f"cannot {action}: API server unreachable ({type(err).__name__})") from None


def _reason(err: ApiException) -> str:
    try:
        message = json.loads(err.body or "{}").get("message") or err.reason
    except (ValueError, AttributeError):
        message = err.reason
    return " ".join(str(message).split())[:200]
