"""Cluster-file validation: every problem reported at once, one clear phrase each."""

from datetime import timedelta
from pathlib import Path

import pytest

from vaultk8s.config import load_config, parse_config
from vaultk8s.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"


def _doc(**over):
    doc = {
        "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443", "service_cidr": "10.96.0.0/12",
                    "domain": "cluster.local"},
        "pki": {"key_type": "ec-p256", "leaf_ttl": "24h", "ca_ttl": "87600h"},
        "vault": {"mount_prefix": ""},
        "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}], "workers": []},
    }
    for dotted, value in over.items():
        section, key = dotted.split("__")
        doc[section][key] = value
    return doc


def _problems(doc) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(doc)
    return err.value.problems


def test_example_is_valid():
    config = load_config(EXAMPLE)
    assert config.name == "demo" and str(config.first_service_ip) == "10.96.0.1"
    assert config.endpoint_host == "10.0.0.10" and config.leaf_ttl == timedelta(hours=24)
    assert [n.name for n in config.control_plane] == ["cp-1"]
    assert config.mount("etcd-ca") == "etcd-ca"


def test_mount_prefix():
    assert parse_config(_doc(vault__mount_prefix="clusters/demo/")).mount("etcd-ca") == "clusters/demo/etcd-ca"
    for bad in ("clusters/demo", "../x/", "sys/", "/abs/", "a//b/"):
        assert any("mount_prefix" in p for p in _problems(_doc(vault__mount_prefix=bad))), bad


@pytest.mark.parametrize("key,value,fragment", [
    ("cluster__name", "Demo", "cluster.name"),
    ("cluster__endpoint", "http://10.0.0.10:6443", "cluster.endpoint"),
    ("cluster__endpoint", "https://bad_host:6443", "neither an IP"),
    ("cluster__service_cidr", "10.96.0.1/12", "service_cidr"),
    ("cluster__domain", "Cluster..local", "cluster.domain"),
    ("pki__key_type", "dsa", "pki.key_type"),
    ("pki__leaf_ttl", "1 day", "not a duration"),
    ("pki__leaf_ttl", "5m", "at least 10m"),
    ("pki__ca_ttl", "12h", "shorter than pki.ca_ttl"),
    ("cluster__colour", "blue", "unknown key cluster.colour"),
])
def test_each_bad_value_is_named(key, value, fragment):
    assert any(fragment in p for p in _problems(_doc(**{key: value})))


def test_nodes_validated_and_all_problems_collected():
    doc = _doc()
    doc["nodes"]["workers"] = [
        {"name": "Worker_1", "ips": ["10.0.1.1"]},
        {"name": "w2", "ips": ["10.0.1.300"]},
        {"name": "w3", "ips": ["10.0.0.11"], "sans": ["*.evil"]},
        {"name": "cp-1", "ips": ["10.0.1.4"]},
        {"name": "w5", "ips": []},
    ]
    problems = _problems(doc)
    joined = "\n".join(problems)
    for fragment in ("Worker_1", "10.0.1.300", "IP 10.0.0.11 is given to both", "no wildcards",
                     "'cp-1' appears more than once", "node w5: ips"):
        assert fragment in joined
    assert len(problems) >= 6


def test_missing_sections_and_unknown_top_level():
    problems = _problems({"pki": {}, "extra": 1})
    assert "missing section 'cluster'" in problems and "missing section 'nodes'" in problems
    assert any("unknown top-level key 'extra'" in p for p in problems)


def test_not_a_mapping():
    assert _problems(["a"]) == ["must be a YAML mapping with cluster, pki, vault and nodes"]


def test_node_names_that_would_share_a_role_are_rejected():
    doc = _doc()
    doc["nodes"]["control_plane"].append({"name": "kubelet-client", "ips": ["10.0.0.12"]})
    assert any("'apiserver-kubelet-client' collide with a shared role" in p for p in _problems(doc))
    doc = _doc()
    doc["nodes"]["workers"] = [{"name": "kubelet-client", "ips": ["10.0.1.1"]}]  # workers have no apiserver role
    parse_config(doc)


def test_kubeconfigs_embed_client_certs():
    assert parse_config(_doc()).embed_client_certs is False  # the default: component configs reference files
    assert parse_config({**_doc(), "kubeconfigs": {"embed_client_certs": True}}).embed_client_certs is True
    assert _problems({**_doc(), "kubeconfigs": {"embed_client_certs": "yes"}}) == [
        "kubeconfigs.embed_client_certs must be true or false, not 'yes'"]
    assert _problems({**_doc(), "kubeconfigs": {"embed": True}}) == [
        "unknown key kubeconfigs.embed (known: embed_client_certs)"]
