"""Host names as the cluster file, URLs and certificates carry them: DNS names and IP addresses."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_dns_label(name: str) -> bool:
    """A DNS-1123 label: lower-case letters, digits and '-', at most 63 characters."""
    return bool(_DNS_LABEL.match(name))


def is_dns_subdomain(name: str) -> bool:
    """A DNS-1123 subdomain: dot-separated labels, at most 253 characters."""
    return 0 < len(name) <= 253 and all(is_dns_label(p) for p in name.split("."))


def url_port(parts: SplitResult) -> int | None:
    """The URL's port; None when it names none, -1 when it is not a port (urlsplit raises then)."""
    try:
        return parts.port
    except ValueError:
        return -1
