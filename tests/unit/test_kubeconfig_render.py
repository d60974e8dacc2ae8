"""Kubeconfig documents derived from catalog.KUBECONFIGS (golden-ish: structure and values)."""

from __future__ import annotations

import base64
import dataclasses

import pytest
import yaml

from vaultk8s import catalog
from vaultk8s.config import parse_config
from vaultk8s.plan.kubeconfig import (kubeconfig_drift, render_document, render_kubeconfig,
                                      resolve_node_kubeconfigs)

CA = b"-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n"
CERT = b"-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def config():
    return parse_config({
        "cluster": {"name": "demo", "endpoint": "https://api.demo.example:6443", "apiserver_port": 7443},
        "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11", "10.0.0.12"]},
                                    {"name": "cp-6", "ips": ["fd00::6"]}],
                  "workers": [{"name": "w-1", "ips": ["10.0.1.1"]}]},
    })


def _by_file(config, node):
    return {rk.file: rk for rk in resolve_node_kubeconfigs(config.node(node), config)}


def test_files_per_node_come_from_the_catalog(config):
    assert set(_by_file(config, "cp-1")) == {k.file for k in catalog.KUBECONFIGS}
    assert set(_by_file(config, "w-1")) == {"kubelet.conf", "kube-proxy.conf"}


def test_servers_and_identities(config):
    cp = _by_file(config, "cp-1")
    assert cp["admin.conf"].server == "https://api.demo.example:6443"
    assert cp["controller-manager.conf"].server == "https://10.0.0.11:7443"  # first IP, local API server
    assert _by_file(config, "cp-6")["scheduler.conf"].server == "https://[fd00::6]:7443"
    assert cp["kubelet.conf"].user == "system:node:cp-1"
    assert cp["super-admin.conf"].organization == "system:masters"
    assert cp["admin.conf"].organization == "kubeadm:cluster-admins"


def test_admin_config_embeds_credentials(config):
    doc = yaml.safe_load(render_kubeconfig(_by_file(config, "cp-1")["admin.conf"], CA, CERT, KEY))
    assert doc["current-context"] == "kubernetes-admin@demo"
    assert doc["contexts"] == [{"name": "kubernetes-admin@demo",
                                "context": {"cluster": "demo", "user": "kubernetes-admin"}}]
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == CA
    user = doc["users"][0]["user"]
    assert base64.b64decode(user["client-certificate-data"]) == CERT
    assert base64.b64decode(user["client-key-data"]) == KEY


def test_component_configs_reference_files(config):
    doc = render_document(_by_file(config, "w-1")["kubelet.conf"], CA)
    assert doc["users"] == [{"name": "system:node:w-1", "user": {
        "client-certificate": "pki/kubelet-client.crt", "client-key": "pki/kubelet-client.key"}}]
    assert doc["clusters"][0]["cluster"]["server"] == "https://api.demo.example:6443"


def test_embedded_config_needs_credentials(config):
    with pytest.raises(ValueError, match="embeds"):
        render_document(_by_file(config, "cp-1")["admin.conf"], CA)


def test_rendering_is_deterministic(config):
    rk = _by_file(config, "cp-1")["scheduler.conf"]
    assert render_kubeconfig(rk, CA) == render_kubeconfig(rk, CA)


def test_drift_reasons(config):
    cp = _by_file(config, "cp-1")
    want = render_document(cp["admin.conf"], CA, CERT, KEY)
    same = render_kubeconfig(cp["admin.conf"], CA, CERT, KEY)
    assert kubeconfig_drift(want, None) == "missing"
    assert kubeconfig_drift(want, b"{not: [yaml") == "unreadable"
    assert kubeconfig_drift(want, same) is None
    cosmetic = yaml.safe_load(same)
    cosmetic["preferences"] = {"colors": True}
    assert kubeconfig_drift(want, yaml.safe_dump(cosmetic).encode()) is None
    assert kubeconfig_drift(want, render_kubeconfig(cp["admin.conf"], CA + CA, CERT, KEY)) == "CA changed"
    assert kubeconfig_drift(want, render_kubeconfig(cp["admin.conf"], CA, CERT + b"x", KEY)) == "client certificate re-issued"
    moved = render_kubeconfig(dataclasses.replace(cp["scheduler.conf"], server="https://10.9.9.9:6443"), CA)
    assert kubeconfig_drift(render_document(cp["scheduler.conf"], CA), moved) == "server changed"
    assert kubeconfig_drift(render_document(cp["kubelet.conf"], CA),
                            render_kubeconfig(cp["kube-proxy.conf"], CA)) == "identity changed"


def test_kubeadm_shaped_clusters_embed_every_client_cert(config):
    kubeadm_shaped = dataclasses.replace(config, embed_client_certs=True)
    for rk in resolve_node_kubeconfigs(kubeadm_shaped.node("cp-1"), kubeadm_shaped):
        user = render_document(rk, CA, CERT, KEY)["users"][0]["user"]
        assert base64.b64decode(user["client-certificate-data"]) == CERT, rk.file
        assert "client-certificate" not in user
    assert not _by_file(config, "cp-1")["controller-manager.conf"].embed  # the default references files


def test_restart_after_rewrite_names_the_reading_component():
    assert catalog.components_reading(["pki/kubelet.crt", "admin.conf", "controller-manager.conf"]) == [
        "kube-controller-manager"]
