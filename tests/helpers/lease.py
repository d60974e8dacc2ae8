"""An in-memory Lease store that enforces resourceVersion, and a fixed clock: what LeaseElector
needs in the unit tests (the real API server is in tests/integration/test_signer_kube.py)."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone

from vaultk8s.errors import KubeConflict


class LeaseStore:
    """Just what LeaseElector calls: read, create, replace with optimistic concurrency."""

    def __init__(self):
        self.lease, self.version = None, 0

    def read_lease(self, namespace, name):
        return copy.deepcopy(self.lease)

    def create_lease(self, namespace, name, spec):
        if self.lease is not None:
            raise KubeConflict("exists")
        self._write({"metadata": {"name": name, "namespace": namespace}, "spec": spec})

    def replace_lease(self, lease, spec):
        if lease["metadata"]["resourceVersion"] != str(self.version):
            raise KubeConflict("changed")
        self._write({**lease, "spec": spec})

    def _write(self, lease):
        self.version += 1
        self.lease = {**lease, "metadata": {**lease["metadata"], "resourceVersion": str(self.version)}}


class Clock:
    def __init__(self):
        self.now = datetime(2026, 12, 1, tzinfo=timezone.utc)
        self.mono = 1000.0

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)
        self.mono += seconds
