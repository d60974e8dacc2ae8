"""Resolve catalog specs against the cluster file: concrete names, SANs and roles per node."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import timedelta

from vaultk8s import catalog
from vaultk8s.catalog import NODE, CertSpec, San, Usage
from vaultk8s.config import ClusterConfig, NodeSpec

LOCALHOST_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
API_SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")  # + SERVICE_FQDN_PREFIX<domain>
SERVICE_FQDN_PREFIX = "kubernetes.default.svc."


@dataclass(frozen=True)
class ResolvedCert:
    """One certificate for one node: exactly what it must contain and where it goes."""

    spec: CertSpec
    node: str
    mount: str
    role: str
    common_name: str
    organization: str | None
    dns_sans: tuple[str, ...]
    ip_sans: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    key_type: str
    ttl: timedelta

    @property
    def usages(self) -> frozenset[Usage]:
        return self.spec.usages

    @property
    def cert_file(self) -> str:
        return self.spec.cert_file

    @property
    def key_file(self) -> str:
        return self.spec.key_file


def role_name(spec: CertSpec, node: str) -> str:
    return spec.role_for(node)


def resolve_sans(spec: CertSpec, node: NodeSpec, config: ClusterConfig) -> tuple[tuple[str, ...], tuple]:
    """DNS and IP SANs of one cert on one node, de-duplicated, in catalog order."""
    names: list[str] = []
    for kind in spec.sans:
        names.extend(_san_values(kind, node, config))
    dns: list[str] = []
    ips: list = []
    for value in names:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            if value not in dns:
                dns.append(value)
        else:
            if ip not in ips:
                ips.append(ip)
    return tuple(dns), tuple(ips)


def _san_values(kind: San, node: NodeSpec, config: ClusterConfig) -> list[str]:
    if kind is San.NODE_NAME:
        return [node.name]
    if kind is San.NODE_IPS:
        return [str(ip) for ip in node.ips]
    if kind is San.NODE_EXTRA_SANS:
        return list(node.sans)
    if kind is San.LOCALHOST:
        return ["localhost"] + [str(ip) for ip in LOCALHOST_IPS]
    if kind is San.API_SERVICE:
        return [*API_SERVICE_NAMES, f"{SERVICE_FQDN_PREFIX}{config.domain}", str(config.first_service_ip)]
    if kind is San.ENDPOINT_HOST:
        return [config.endpoint_host]
    raise ValueError(kind)


def resolve_cert(spec: CertSpec, node: NodeSpec, config: ClusterConfig) -> ResolvedCert:
    dns, ips = resolve_sans(spec, node, config)
    return ResolvedCert(
        spec=spec,
        node=node.name,
        mount=config.mount(spec.ca),
        role=role_name(spec, node.name),
        common_name=spec.common_name.replace(NODE, node.name),
        organization=spec.organization,
        dns_sans=dns,
        ip_sans=ips,
        key_type=config.key_type,
        ttl=config.leaf_ttl,
    )


def resolve_node(node: NodeSpec, config: ClusterConfig) -> tuple[ResolvedCert, ...]:
    return tuple(resolve_cert(spec, node, config) for spec in catalog.certs_for(node.control_plane))


def resolve_all(config: ClusterConfig) -> tuple[ResolvedCert, ...]:
    return tuple(rc for node in config.nodes for rc in resolve_node(node, config))
