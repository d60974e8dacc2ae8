"""plan_ca in HSM mode: pure decisions from the observed mount and the token's root fingerprint."""

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaultk8s import catalog, crypto
from vaultk8s.config import parse_config
from vaultk8s.errors import PlanRefused
from vaultk8s.plan.cas import AUTO_TIDY, ObservedCA, intermediate_params, plan_ca

NOW = datetime(2026, 11, 23, tzinfo=timezone.utc)
BASE = {
    "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443"},
    "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}]},
}
HSM = {"module": "/usr/lib/softhsm/libsofthsm2.so", "token_label": "vaultk8s",
       "pin_env": "VAULTK8S_HSM_PIN", "key_type": "ec-p384"}
PLAIN, WITH_HSM = parse_config(BASE), parse_config({**BASE, "hsm": HSM})
CA = catalog.ca("kubernetes-ca")
ADDR = "https://vault:8200"


def _cert(subject: str, issuer: str, key, signer) -> x509.Certificate:
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    return (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(signer, hashes.SHA256()))


ROOT_KEY, OTHER_KEY, INT_KEY = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
ROOT = _cert("kubernetes", "kubernetes", ROOT_KEY, ROOT_KEY)
OTHER_ROOT = _cert("kubernetes", "kubernetes", OTHER_KEY, OTHER_KEY)
INTERMEDIATE = _cert("kubernetes-intermediate", "kubernetes", INT_KEY, ROOT_KEY)


def _observed(issuer=None, chain=(), token_root=None) -> ObservedCA:
    pem = lambda c: crypto.cert_pem(c).decode()  # noqa: E731
    urls = {"issuing_certificates": [f"{ADDR}/v1/kubernetes-ca/ca"],
            "crl_distribution_points": [f"{ADDR}/v1/kubernetes-ca/crl"]}
    return ObservedCA("pki", pem(issuer) if issuer else None, 10**9, urls, tuple(pem(c) for c in chain),
                      crypto.fingerprint(token_root) if token_root else None, dict(AUTO_TIDY))


def test_new_ca_in_hsm_mode_is_an_hsm_intermediate():
    actions = plan_ca(CA, WITH_HSM, ObservedCA(None), ADDR)
    assert [a.kind for a in actions] == ["enable-mount", "hsm-intermediate", "configure-urls", "configure-tidy"]
    assert "new root" in actions[1].reason
    reused = plan_ca(CA, WITH_HSM, replace(_observed(), hsm_root_sha256="ab"), ADDR)
    assert [a.kind for a in reused] == ["hsm-intermediate"] and "existing root" in reused[0].reason


def test_without_hsm_a_new_ca_is_a_vault_root():
    assert [a.kind for a in plan_ca(CA, PLAIN, ObservedCA(None), ADDR)][1] == "generate-root"


def test_intermediate_signed_by_the_token_root_plans_nothing():
    assert plan_ca(CA, WITH_HSM, _observed(INTERMEDIATE, (INTERMEDIATE, ROOT), ROOT), ADDR) == []


def test_vault_root_with_hsm_block_refused():
    with pytest.raises(PlanRefused, match="root key is in Vault.*re-trust"):
        plan_ca(CA, WITH_HSM, _observed(ROOT, (ROOT,), ROOT), ADDR)


def test_intermediate_without_hsm_block_refused():
    with pytest.raises(PlanRefused, match="restore the hsm: block"):
        plan_ca(CA, PLAIN, _observed(INTERMEDIATE, (INTERMEDIATE, ROOT)), ADDR)


@pytest.mark.parametrize("token_root", [None, OTHER_ROOT])
def test_intermediate_of_another_root_refused(token_root):
    with pytest.raises(PlanRefused, match="not signed by the token's root for kubernetes-ca"):
        plan_ca(CA, WITH_HSM, _observed(INTERMEDIATE, (INTERMEDIATE, ROOT), token_root), ADDR)


def test_chain_naming_the_token_root_but_not_signed_by_it_refused():
    # Same fingerprint claimed in the chain is not enough: the signature must verify.
    forged = _cert("kubernetes-intermediate", "kubernetes", INT_KEY, OTHER_KEY)
    with pytest.raises(PlanRefused, match="not signed by the token's root"):
        plan_ca(CA, WITH_HSM, _observed(forged, (forged, ROOT), ROOT), ADDR)


def test_intermediate_uses_the_leaf_key_type():
    params = intermediate_params(CA, WITH_HSM)
    assert params["common_name"] == "kubernetes-intermediate"
    assert (params["key_type"], params["key_bits"]) == ("ec", 256)  # pki.key_type, not hsm.key_type
