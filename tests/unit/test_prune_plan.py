"""Pure planning of what a removed node left in Vault: only this cluster's objects are deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vaultk8s.config import parse_config
from vaultk8s.plan import grants, hcl, machine_auth, naming, prune
from vaultk8s.plan.prune import Observed, plan_prune
from vaultk8s.plan.review import HIGH, MEDIUM, review

ROOT = Path(__file__).resolve().parents[2]
APPROLE_ACC, TOKEN_ACC = "auth_approle_1", "auth_token_1"


def _example_doc() -> dict:
    return yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())


def _config(prefix: str = "", drop: tuple[str, ...] = ()):
    doc = _example_doc()
    nodes = {group: [n for n in doc["nodes"][group] if n["name"] not in drop] for group in doc["nodes"]}
    return parse_config(doc | {"vault": {"mount_prefix": prefix}, "nodes": nodes})


@pytest.fixture(scope="module")
def full():
    return _config()


@pytest.fixture(scope="module")
def shrunk():
    return _config(drop=("worker-2",))


def _written(config, node_name, approle_acc=APPROLE_ACC, token_acc=TOKEN_ACC):
    """What `policy apply` wrote for one node, as Vault returns it."""
    node = config.node(node_name)
    name = naming.entity_name(config, node_name)
    entity = {"name": name, "metadata": machine_auth.entity_metadata(config, node),
              "aliases": [{"mount_accessor": approle_acc, "name": "some-role-id"},
                          {"mount_accessor": token_acc, "name": name}]}
    return ({naming.approle_role(node_name): machine_auth.approle_params(config, node)},
            {name: machine_auth.token_role_params(config, node)}, {name: entity})


def _observed(config, nodes, **extra):
    approle, token, entities = {}, {}, {}
    for name in nodes:
        a, t, e = _written(config, name)
        approle |= a
        token |= t
        entities |= e
    return Observed(approle | extra.get("approle", {}), token | extra.get("token", {}),
                    entities | extra.get("entities", {}), APPROLE_ACC, TOKEN_ACC)


def test_nothing_to_prune_when_vault_matches_the_file(full):
    assert plan_prune(full, _observed(full, [n.name for n in full.nodes])) == prune.PrunePlan()


def test_removed_node_loses_approle_role_token_role_and_entity_in_that_order(full, shrunk):
    observed = _observed(full, [n.name for n in full.nodes])  # written while worker-2 was in the file
    plan = plan_prune(shrunk, observed)
    assert plan.skipped == ()
    assert [(s.kind, s.node, s.path) for s in plan.stale] == [
        (prune.APPROLE_ROLE, "worker-2", "auth/approle/role/node-worker-2"),
        (prune.TOKEN_ROLE, "worker-2", "auth/token/roles/vaultk8s-node-worker-2"),
        (prune.ENTITY, "worker-2", "identity/entity/name/vaultk8s-node-worker-2"),
    ]


def test_partial_leftovers_are_found_from_any_one_object(full, shrunk):
    """A crash between deletions (or a hand deletion) leaves some objects: each is found on its own."""
    _, _, entities = _written(full, "worker-2")
    plan = plan_prune(shrunk, Observed(entities=entities, approle_accessor=APPROLE_ACC, token_accessor=TOKEN_ACC))
    assert [(s.kind, s.node) for s in plan.stale] == [(prune.ENTITY, "worker-2")]
    # an entity whose aliases were already removed is still ours
    bare = {k: {**v, "aliases": []} for k, v in entities.items()}
    assert len(plan_prune(shrunk, Observed(entities=bare)).stale) == 1


def test_objects_gone_since_the_listing_are_ignored(shrunk):
    observed = Observed(approle_roles={"node-worker-2": None}, token_roles={"vaultk8s-node-worker-2": None},
                        entities={"vaultk8s-node-worker-2": None})
    assert plan_prune(shrunk, observed) == prune.PrunePlan()


def test_candidates_need_the_scheme_and_a_removed_node(shrunk):
    assert prune.candidate_approle_roles(shrunk, ["node-worker-1", "node-worker-2", "ci", "node-"]) == ["node-worker-2"]
    names = ["vaultk8s-node-worker-1", "vaultk8s-node-worker-2", "vaultk8s-node-", "vaultk8s-agent", "alice"]
    assert prune.candidate_entity_names(shrunk, names) == ["vaultk8s-node-worker-2"]


def test_nested_prefix_cluster_is_never_ours():
    """Prefix "" names its node `x-node-a` like prefix "node-x/" names its node `a`: content decides."""
    mine = _config("")
    other = parse_config(_example_doc() | {"vault": {"mount_prefix": "node-x/"},
                                             "nodes": {"control_plane": [{"name": "a", "ips": ["10.0.0.11"]}],
                                                       "workers": []}})
    name = naming.entity_name(other, "a")
    assert name == "vaultk8s-node-x-node-a" and prune.candidate_entity_names(mine, [name]) == [name]
    node = other.node("a")
    entity = {"metadata": machine_auth.entity_metadata(other, node),
              "aliases": [{"mount_accessor": "other_approle", "name": "rid"}]}
    plan = plan_prune(mine, Observed(token_roles={name: machine_auth.token_role_params(other, node)},
                                     entities={name: entity}, approle_accessor=APPROLE_ACC, token_accessor=TOKEN_ACC))
    assert plan.stale == ()
    assert {s.kind for s in plan.skipped} == {prune.TOKEN_ROLE, prune.ENTITY}
    # and the other cluster never sees this cluster's nodes as its own
    assert prune.candidate_entity_names(other, [naming.entity_name(mine, "worker-1")]) == []


@pytest.mark.parametrize("change, needle", [
    ({"token_policies": []}, "no policies"),
    ({"token_policies": ["vaultk8s-node", "ci-deploy"]}, "ci-deploy"),
])
def test_foreign_approle_role_on_a_shared_mount_is_kept(full, shrunk, change, needle):
    """Prefix "" uses Vault's default approle/ path: a `node-*` role there may be someone else's."""
    a, _, _ = _written(full, "worker-2")
    role = {**a["node-worker-2"], **change}
    plan = plan_prune(shrunk, Observed(approle_roles={"node-worker-2": role}))
    assert plan.stale == () and needle in plan.skipped[0].reason


def test_token_role_bound_to_other_aliases_is_kept(full, shrunk):
    _, t, _ = _written(full, "worker-2")
    name = naming.entity_name(full, "worker-2")
    t[name]["allowed_entity_aliases"] = [name, "alice"]
    plan = plan_prune(shrunk, Observed(token_roles=t))
    assert plan.stale == () and "allowed_entity_aliases" in plan.skipped[0].reason


@pytest.mark.parametrize("mutate, needle", [
    (lambda e: e["metadata"].update(node="worker-1"), "metadata node"),
    (lambda e: e["metadata"].update(cluster="another"), "metadata cluster"),
    (lambda e: e["aliases"].append({"mount_accessor": "auth_ldap_9", "mount_path": "auth/ldap/", "name": "bob"}),
     "auth/ldap/"),
])
def test_entity_that_is_not_purely_ours_is_kept(full, shrunk, mutate, needle):
    _, _, entities = _written(full, "worker-2")
    mutate(entities["vaultk8s-node-worker-2"])
    plan = plan_prune(shrunk, Observed(entities=entities, approle_accessor=APPROLE_ACC, token_accessor=TOKEN_ACC))
    assert plan.stale == () and needle in plan.skipped[0].reason


def test_prefixed_cluster_prunes_only_its_own_names():
    config = _config("clusters/a/", drop=("worker-2",))
    before = _config("clusters/a/")
    observed = _observed(before, [n.name for n in before.nodes])
    plan = plan_prune(config, observed)
    assert [s.path for s in plan.stale] == ["auth/clusters/a/approle/role/node-worker-2",
                                            "auth/token/roles/vaultk8s-clusters-a-node-worker-2",
                                            "identity/entity/name/vaultk8s-clusters-a-node-worker-2"]
    # prefix "" (same Vault, other cluster) sees none of them as candidates
    assert prune.candidate_entity_names(_config(""), list(observed.entities)) == []


def test_review_flags_leftovers_high_and_kept_lookalikes_medium(full, shrunk):
    texts = {k: hcl.render_policy(k, shrunk) for k in grants.policy_kinds()}
    plan = plan_prune(shrunk, _observed(full, [n.name for n in full.nodes]))
    result = review(shrunk, texts, {}, plan)
    flagged = [f for f in result.high if f.identity == "node@worker-2"]
    assert {f.subject for f in flagged} == {s.path for s in plan.stale}
    kept = prune.PrunePlan(skipped=(prune.Skipped(prune.ENTITY, "identity/entity/name/x", "because"),))
    assert any(f.severity == MEDIUM and f.subject == "identity/entity/name/x"
               for f in review(shrunk, texts, {}, kept).findings)
    assert not [f for f in review(shrunk, texts, {}, prune.PrunePlan()).findings if f.severity == HIGH
                and f.identity.startswith("node@")]
