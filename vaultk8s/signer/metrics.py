"""The signer's Prometheus metrics and its /healthz + /metrics HTTP endpoint.

The endpoint is a small ThreadingHTTPServer; the agent's health server (issue 10) should absorb it
once both have landed, so there is one server for both long-running processes.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class SignerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.signed = Counter("vaultk8s_signer_signed", "CSRs signed, by signer name.", ["signer"], registry=r)
        self.approved = Counter("vaultk8s_signer_approved", "kubelet-serving CSRs approved (--approve-serving).",
                                registry=r)
        self.denied = Counter("vaultk8s_signer_denied", "CSRs denied, by reason.", ["reason"], registry=r)
        self.failed = Counter("vaultk8s_signer_failed", "Approved CSRs refused with a Failed condition, by reason.",
                              ["reason"], registry=r)
        self.retries = Counter("vaultk8s_signer_transient_errors", "Transient errors retried with backoff, by "
                               "component.", ["component"], registry=r)
        self.leader = Gauge("vaultk8s_signer_leader", "1 while this replica holds the lease.", registry=r)
        self.last_sync = Gauge("vaultk8s_signer_last_sync_timestamp_seconds", "End of the last full list of CSRs.",
                               registry=r)


class HealthServer:
    """GET /healthz (200 while `healthy()` is true, else 503) and GET /metrics."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, healthy: Callable[[], bool]):
        self.registry, self.healthy = registry, healthy
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="signer-http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/healthz":
                    ok = server.healthy()
                    self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n", "text/plain")
                elif self.path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # probes every few seconds would flood the log
                pass

        return Handler


def parse_addr(text: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [::1]:PORT)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:9464")
    return host.strip("[]"), int(port)


class Heartbeat:
    """The loop beats each pass; health fails when it has not beaten for `limit` seconds."""

    def __init__(self, limit: float, monotonic: Callable[[], float] = time.monotonic):
        self.limit, self.monotonic = limit, monotonic
        self._last = monotonic()

    def beat(self) -> None:
        self._last = self.monotonic()

    def alive(self) -> bool:
        return self.monotonic() - self._last < self.limit
