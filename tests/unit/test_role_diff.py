"""The role diff: which PKI roles bootstrap deletes and writes, from what Vault holds."""

from vaultk8s.plan.role_diff import role_actions
from vaultk8s.plan.roles import ResolvedRole

A = ResolvedRole("pki", "a", {"ttl": 60, "allowed_domains": ["a"]})
B = ResolvedRole("pki", "b", {"ttl": 60, "allowed_domains": ["b"]})


def _plan(listed, observed):
    return [(a.kind, a.target, a.reason) for a in role_actions((A, B), listed, observed)]


def test_unwanted_roles_are_deleted_first_then_missing_and_drifted_ones_written():
    observed = {("pki", "a"): {"ttl": 60, "allowed_domains": ["a"]}, ("pki", "b"): {"ttl": 30, "allowed_domains": ["b"]}}
    assert _plan({"pki": ["a", "b", "old-node"]}, observed) == [
        ("delete-role", "pki/roles/old-node", "not in the catalog/cluster file"),
        ("write-role", "pki/roles/b", "differs in ttl"),
    ]
    assert _plan({}, {}) == [("write-role", "pki/roles/a", "new role"), ("write-role", "pki/roles/b", "new role")]


def test_matching_roles_plan_nothing():
    observed = {(r.mount, r.name): dict(r.params) for r in (A, B)}
    assert _plan({"pki": ["b", "a"]}, observed) == []
