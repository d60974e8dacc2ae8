"""Free ports for the servers the tests start, chosen below the kernel's ephemeral range.

A port the kernel hands out for bind(("127.0.0.1", 0)) is in the ephemeral range. Another
process's outgoing connection may take it before the server binds it: a bootstrap run between
the two makes dozens. That failed a suite run: "kube-apiserver: bind: address already in use"."""

from __future__ import annotations

import random
import socket


_given: set[int] = set()  # never the same port twice in a session: two picks in a row may both be free


def find_free_port(span: int = 2, host: str = "127.0.0.1") -> int:
    """A free port P with P+1..P+span-1 free too: a dev node's cluster listener takes PORT+1, and
    node k of a dev cluster PORT+2(k-1) and the next (span 6 for 3 nodes)."""
    low, _ = _ephemeral_range()
    for _ in range(200):
        # Below the ephemeral range: a server killed and restarted by a test must find its port
        # still free, not taken by some client's outgoing connection meanwhile.
        port = random.randrange(10000, max(10001, low - span))
        ports = range(port, port + span)
        if _given.isdisjoint(ports) and all(_can_bind(host, p) for p in ports):
            _given.update(ports)
            return port
    raise RuntimeError(f"no {span} free consecutive ports on {host}")


def _can_bind(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high
