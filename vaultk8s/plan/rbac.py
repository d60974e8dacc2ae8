"""rbac.yaml: the ClusterRoleBindings the catalog's identities rely on, as manifests. Pure."""

from __future__ import annotations

import yaml

from vaultk8s import catalog


def render_rbac() -> bytes:
    docs = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": b.name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": b.cluster_role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": b.subject_kind, "name": b.subject_name}],
        }
        for b in catalog.CLUSTER_ROLE_BINDINGS
    ]
    header = "# ClusterRoleBindings the catalog's identities rely on; apply with admin.conf.\n"
    return (header + yaml.safe_dump_all(docs, sort_keys=False)).encode()
