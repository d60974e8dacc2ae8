"""Re-issue decisions with a fixed clock: missing, mismatched, wrong CA, renewal window."""

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from vaultk8s import crypto
from vaultk8s.config import load_config
from vaultk8s.plan.leaves import ObservedLeaf, leaf_health, reissue_reason, renewal_time
from vaultk8s.plan.resolve import resolve_all

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cluster.yaml"
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _ca():
    key = crypto.generate_key("ec-p256")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(T0).not_valid_after(T0 + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def _leaf(rc, ca, ca_key, **over):
    key = crypto.generate_key(over.get("key_type", rc.key_type))
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, over.get("cn", rc.common_name))]
    if rc.organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, rc.organization))
    sans = [x509.DNSName(d) for d in over.get("dns", rc.dns_sans)] + [x509.IPAddress(i) for i in rc.ip_sans]
    ekus = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
    builder = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(2).not_valid_before(T0)
               .not_valid_after(T0 + timedelta(hours=24))
               .add_extension(x509.ExtendedKeyUsage([ekus[u.value] for u in rc.usages]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _apiserver():
    return next(rc for rc in resolve_all(load_config(EXAMPLE)) if rc.role == "apiserver-cp-1")


def test_keep_a_good_leaf_until_two_thirds():
    rc = _apiserver()
    ca, ca_key = _ca()
    cert, key = _leaf(rc, ca, ca_key)
    observed = ObservedLeaf(cert, key)
    assert reissue_reason(rc, observed, [ca], T0 + timedelta(hours=15)) is None
    assert reissue_reason(rc, observed, [ca], T0 + timedelta(hours=16, seconds=1)) == "in renewal window"
    assert reissue_reason(rc, observed, [ca], T0 + timedelta(hours=25)) == "expired"
    assert reissue_reason(rc, observed, [ca], T0, force=True) == "forced renewal"


def test_reasons():
    rc = _apiserver()
    ca, ca_key = _ca()
    other_ca, other_key = _ca()
    cert, key = _leaf(rc, ca, ca_key)
    assert reissue_reason(rc, ObservedLeaf(None, None), [ca], T0) == "missing"
    assert reissue_reason(rc, ObservedLeaf(cert, None), [ca], T0) == "key missing"
    assert reissue_reason(rc, ObservedLeaf(cert, crypto.generate_key("ec-p256")), [ca], T0) == "key does not match certificate"
    assert reissue_reason(rc, ObservedLeaf(cert, key), [other_ca], T0) == "not issued by the current CA"
    wrong_cn, k = _leaf(rc, ca, ca_key, cn="kube-apiserver-x")
    assert reissue_reason(rc, ObservedLeaf(wrong_cn, k), [ca], T0) == "CN changed"
    fewer_sans, k = _leaf(rc, ca, ca_key, dns=rc.dns_sans[:-1])
    assert reissue_reason(rc, ObservedLeaf(fewer_sans, k), [ca], T0) == "DNS SANs changed"
    rsa, k = _leaf(rc, ca, ca_key, key_type="rsa-2048")
    assert reissue_reason(rc, ObservedLeaf(rsa, k), [ca], T0) == "key type changed"


@given(st.integers(min_value=600, max_value=10 * 365 * 86400), st.floats(min_value=0, max_value=1))
def test_renewal_time_is_inside_the_last_third(lifetime, position):
    start = T0
    end = T0 + timedelta(seconds=lifetime)
    renew = renewal_time(start, end)
    assert start < renew < end
    assert abs((end - renew).total_seconds() - lifetime / 3) <= 1


def test_health_fails_in_the_last_tenth_and_when_unusable():
    rc = _apiserver()
    ca, ca_key = _ca()
    cert, key = _leaf(rc, ca, ca_key)  # 24h from T0: the last tenth starts at 21h36m
    observed = ObservedLeaf(cert, key)
    assert leaf_health(observed, T0) is None
    assert leaf_health(observed, T0 + timedelta(hours=21, minutes=35)) is None
    assert leaf_health(observed, T0 + timedelta(hours=21, minutes=37)) == \
        "in the last tenth of its life (expires 2026-01-02T00:00:00Z)"
    assert leaf_health(observed, T0 + timedelta(hours=24)) == "expired at 2026-01-02T00:00:00Z"
    assert leaf_health(observed, T0 - timedelta(seconds=1)) == "not valid before 2026-01-01T00:00:00Z"
    assert leaf_health(ObservedLeaf(None, None), T0) == "missing"
    assert leaf_health(ObservedLeaf(cert, None), T0) == "key missing"
    assert leaf_health(ObservedLeaf(cert, crypto.generate_key("ec-p256")), T0) == "key does not match certificate"
