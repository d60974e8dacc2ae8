"""render_kubeconfig fills a dumped skeleton instead of running PyYAML's representer per document;
its bytes must be exactly yaml.dump's, for every kubeconfig the catalog has and any string."""

from __future__ import annotations

import yaml
from hypothesis import given, settings, strategies as st

from vaultk8s.config import parse_config
from vaultk8s.plan.kubeconfig import _SAFE_DUMPER, dump_yaml, render_document, render_kubeconfig, resolve_node_kubeconfigs

PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TRICKY = ["yes", "No", "on", "1", "1.5", "0x1f", "1e3", "2024-01-01", "null", "~", "", " ", "a: b", "a:", "#x",
          "a #b", "-a", "a b", "ümlaut", "@x", "a@b", "system:node:n1@demo", "https://[fd00::1]:6443", "'q'",
          '"q"', "a\nb", "=", "<<", "a,b", "{a}", "!x", "&a", "*a", "%x", "`x", "|", ">", "? a", "a\tb"]


def _doc(name: str, ip: str, embed: bool) -> dict:
    return {"cluster": {"name": name, "endpoint": "https://10.0.0.10:6443"},
            "kubeconfigs": {"embed_client_certs": embed},
            "nodes": {"control_plane": [{"name": "cp-1", "ips": [ip + "1"]}],
                      "workers": [{"name": "worker-1", "ips": [ip + "2"]}]}}


def _plain_dump(doc) -> str:
    return yaml.dump(doc, Dumper=_SAFE_DUMPER, sort_keys=False)


def test_every_catalog_kubeconfig_is_byte_for_byte_what_yaml_dump_writes():
    count = 0
    for name in ("demo", "prod-eu-1", "a"):
        for ip in ("10.0.0.1", "fd00::1"):
            for embed in (False, True):
                config = parse_config(_doc(name, ip, embed))
                for node in config.nodes:
                    for rk in resolve_node_kubeconfigs(node, config):
                        args = (rk, PEM, PEM, PEM)
                        assert render_kubeconfig(*args).decode() == _plain_dump(render_document(*args)), rk.file
                        count += 1
    assert count > 20


def test_strings_yaml_would_quote_or_retype_take_the_plain_dump():
    for value in TRICKY:
        doc = {"apiVersion": "v1", "users": [{"name": value, "user": {"token": value}}], "preferences": {}}
        assert dump_yaml(doc) == _plain_dump(doc), repr(value)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20) | st.from_regex(r"[A-Za-z0-9+/=._@:-]{0,30}", fullmatch=True), min_size=3,
                max_size=3))
def test_any_strings_dump_the_same(values):
    doc = {"kind": values[0], "clusters": [{"name": values[1], "cluster": {"server": values[2]}}], "preferences": {}}
    assert dump_yaml(doc) == _plain_dump(doc)


def test_documents_of_one_shape_are_dumped_once(monkeypatch):
    from vaultk8s.plan import kubeconfig

    dumps = []
    real_dump = yaml.dump
    monkeypatch.setattr(kubeconfig.yaml, "dump", lambda doc, **kw: dumps.append(1) or real_dump(doc, **kw))
    monkeypatch.setattr(kubeconfig, "_SKELETONS", {})
    workers = [{"name": f"worker-{i}", "ips": [f"10.0.1.{i}"]} for i in range(1, 21)]
    config = parse_config({"cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443"},
                           "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}], "workers": workers}})
    files = [render_kubeconfig(rk, PEM) for node in config.nodes[1:] for rk in resolve_node_kubeconfigs(node, config)]
    assert len(files) == 40 and len(set(files)) == 21  # 20 kubelet.conf, one kube-proxy.conf for all
    assert len(dumps) <= 2  # kubelet.conf and kube-proxy.conf: two shapes at most, then filled in
