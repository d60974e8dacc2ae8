"""The health/metrics listener: /healthz, /readyz and Prometheus /metrics on one HOST:PORT."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler

from vaultk8s.errors import ConfigError
from vaultk8s.serve.checks import Check, run_check

MAX_REASON = 300


def parse_listen_addr(value: str, flag: str = "--metrics-addr") -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); the port must be 1-65535."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{flag} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9469", "command line")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ipv6(host, value, flag)
    elif ":" in host:
        raise ConfigError(f"{flag} {value!r}: put an IPv6 address in brackets, e.g. [::1]:9469", "command line")
    return host, check_port(port_text, flag)


def check_port(port: str | int, flag: str = "--metrics-port") -> int:
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 1 <= number <= 65535:
        raise ConfigError(f"{flag}: port {port!r} is not in 1-65535", "command line")
    return number


def _check_ipv6(host: str, value: str, flag: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: {host!r} is not an IPv6 address", "command line") from None


class HealthServer:
    """Serves the checks and a registry on a background thread; `start()` binds or raises ConfigError."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, *, liveness: Check, readiness: Check):
        self.host, self.port = host, port
        self._handler = _handler(registry, {"/healthz": liveness, "/readyz": readiness})
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "HealthServer":
        try:
            self._server = _Server((self.host, self.port), self._handler)
        except OSError as err:
            raise ConfigError(f"cannot listen on {self.address}: {_why(err)}", "command line") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="vaultk8s-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type) -> None:
        self.address_family = _family(address[0])
        super().__init__(address, handler)


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a name: let getaddrinfo pick, IPv4 first like most resolvers
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return infos[0][0] if infos else socket.AF_INET


def _handler(registry: CollectorRegistry, checks: dict[str, Check]) -> type:
    class Handler(MetricsHandler.factory(registry)):  # type: ignore[misc]
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                super().do_GET()
            elif path in checks:
                self._answer(checks[path])
            else:
                self._reply(404, "not found: try /healthz, /readyz or /metrics")

        def _answer(self, check: Check) -> None:
            reason = run_check(check)
            self._reply(200, "ok") if reason is None else self._reply(503, reason)

        def _reply(self, status: int, text: str) -> None:
            body = (" ".join(text.split())[:MAX_REASON] + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def _why(err: OSError) -> str:
    if err.errno == errno.EADDRINUSE:
        return "address already in use (another agent or exporter on that port?)"
    if err.errno == errno.EADDRNOTAVAIL:
        return "no such local address"
    if isinstance(err, socket.gaierror):
        return "host name does not resolve"
    return err.strerror or type(err).__name__
