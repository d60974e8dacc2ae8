"""Catalog invariants: the one table must be internally consistent."""

import pytest

from vaultk8s import catalog
from vaultk8s.catalog import NODE, Placement, Usage


def test_every_cert_names_an_existing_ca():
    names = {ca.name for ca in catalog.CAS}
    assert all(spec.ca in names for spec in catalog.CERTS)


def test_ids_and_file_names_are_unique():
    ids = [spec.name for spec in catalog.CERTS]
    files = [f for spec in catalog.CERTS for f in (spec.cert_file, spec.key_file)] + [ca.cert_file for ca in catalog.CAS]
    assert len(ids) == len(set(ids))
    assert len(files) == len(set(files))
    assert not set(files) & {catalog.SA_KEY_FILE, catalog.SA_PUB_FILE}


def test_no_ca_key_file_is_ever_a_catalog_output():
    files = {f for spec in catalog.CERTS for f in (spec.cert_file, spec.key_file)}
    assert not files & catalog.CA_KEY_FILES


def test_kubeconfigs_name_client_certs_placed_where_they_are():
    for kc in catalog.KUBECONFIGS:
        spec = catalog.cert(kc.cert)
        assert Usage.CLIENT in spec.usages
        assert spec.ca == "kubernetes-ca"
        if kc.placement is Placement.ALL_NODES:
            assert spec.placement is Placement.ALL_NODES
    assert len({kc.file for kc in catalog.KUBECONFIGS}) == len(catalog.KUBECONFIGS)


def test_node_specific_certs_get_per_node_roles():
    assert catalog.cert("kubelet-client").per_node and catalog.cert("etcd-server").per_node
    assert catalog.cert("apiserver").per_node
    assert not catalog.cert("kube-proxy").per_node and not catalog.cert("admin").per_node
    assert all(NODE not in spec.common_name or spec.per_node for spec in catalog.CERTS)


def test_front_proxy_is_its_own_ca():
    # kube-apiserver checks requestheader CA first; a shared CA would break ordinary client certs.
    assert catalog.cert("front-proxy-client").ca == "front-proxy-ca"
    assert {c.ca for c in catalog.CERTS if c.name != "front-proxy-client"}.isdisjoint({"front-proxy-ca"})


def test_only_super_admin_is_system_masters():
    assert [c.name for c in catalog.CERTS if c.organization == "system:masters"] == ["super-admin"]


def test_workers_get_only_node_identities():
    assert {c.name for c in catalog.certs_for(False)} == {"kubelet-client", "kubelet-serving", "kube-proxy"}
    assert [c.name for c in catalog.cas_for(False)] == ["kubernetes-ca"]


def test_every_cert_belongs_to_exactly_one_identity():
    for spec in catalog.CERTS:
        owners = [i.name for i in catalog.IDENTITIES if spec.name in i.certs and not i.every_node]
        assert len(owners) == 1, (spec.name, owners)
    assert {c for i in catalog.IDENTITIES for c in i.certs} == {c.name for c in catalog.CERTS}


def test_the_csr_signer_acts_only_for_kubelet_certificates():
    signers = [i for i in catalog.IDENTITIES if i.every_node]
    assert [(i.name, i.certs, i.attach) for i in signers] == [("csr-signer", ("kubelet-client", "kubelet-serving"), None)]
    assert catalog.identity_of("kubelet-client").name == "node"


def test_an_unknown_name_is_a_key_error_not_none():
    for lookup in (catalog.ca, catalog.cert):
        with pytest.raises(KeyError):
            lookup("no-such-spec")


def test_ca_key_files_are_derived_from_the_cas():
    assert catalog.CA_KEY_FILES == {"ca.key", "etcd/ca.key", "front-proxy-ca.key"}
