"""The pure CA-rotation plan: state from issuer names, phase order, refusals, retired-issuer cleanup."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vaultk8s.errors import PlanRefused
from vaultk8s.plan import ca_rotation as plan
from vaultk8s.plan.ca_rotation import IssuerView, LeafView, CARotationPhase, State

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
TTL = timedelta(hours=24)
MOUNT = "t/etcd-ca"


def _cert(subject: str, key, signer_key, issuer: str, ca: bool) -> x509.Certificate:
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    return builder.sign(signer_key, hashes.SHA256())


OLD_KEY, NEW_KEY, LEAF_KEY = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
OLD = _cert("etcd-ca", OLD_KEY, OLD_KEY, "etcd-ca", True)
NEW = _cert("etcd-ca", NEW_KEY, NEW_KEY, "etcd-ca", True)
CROSS = _cert("etcd-ca", NEW_KEY, OLD_KEY, "etcd-ca", True)
OLD_LEAF = LeafView("cp-1/pki/etcd/server.crt", _cert("cp-1", LEAF_KEY, OLD_KEY, "etcd-ca", False))
NEW_LEAF = LeafView("cp-1/pki/etcd/peer.crt", _cert("cp-1", LEAF_KEY, NEW_KEY, "etcd-ca", False))
ALL = frozenset({"issuing-certificates", "crl-signing", "ocsp-signing", "read-only"})


def _old(default=True, chain=()):
    return IssuerView("id-old", "root", OLD, "k-old", ALL, tuple(chain), default)


def _new(default=False, chain=()):
    return IssuerView("id-new", "root-g2", NEW, "k-new", ALL, tuple(chain), default)


def _cross():
    return IssuerView("id-cross", "cross-g2", CROSS, "k-new", ALL)


def _staged():
    return [_old(chain=("id-old", "id-new")), _new(), _cross()]


def _switched():
    return [_old(default=False, chain=("id-old", "id-new")), _new(default=True), _cross()]


def _plan(phase, issuers, leaves=(), now=NOW, force=False):
    return plan.plan_rotation(MOUNT, "etcd-ca", phase, issuers, list(leaves), now, TTL, force)


def test_state_follows_issuer_names_and_the_default():
    assert plan.classify(MOUNT, [_old()]).state is State.IDLE
    assert plan.classify(MOUNT, _staged()).state is State.STAGED
    rotation = plan.classify(MOUNT, _switched())
    assert rotation.state is State.SWITCHED and rotation.old.id == "id-old" and rotation.cross.id == "id-cross"


def test_stage_from_idle_makes_the_next_generation_and_rerun_is_a_noop():
    kinds = [(a.kind, a.target) for a in _plan(CARotationPhase.STAGE, [_old()]).actions]
    assert kinds == [("generate-root", f"{MOUNT}/issuer/root-g2"), ("cross-sign", f"{MOUNT}/issuer/cross-g2"),
                     ("chain-issuer", f"{MOUNT}/issuer/root")]
    assert _plan(CARotationPhase.STAGE, _staged()).actions == []


def test_an_interrupted_stage_is_completed_not_repeated():
    kinds = [a.kind for a in _plan(CARotationPhase.STAGE, [_old(), _new()]).actions]
    assert kinds == ["cross-sign", "chain-issuer"]
    with pytest.raises(PlanRefused, match="stage did not finish"):
        _plan(CARotationPhase.SWITCH, [_old(), _new()])


def test_phase_order_is_enforced():
    with pytest.raises(PlanRefused, match="nothing staged"):
        _plan(CARotationPhase.SWITCH, [_old()])
    with pytest.raises(PlanRefused, match="nothing to retire"):
        _plan(CARotationPhase.RETIRE, [_old()])
    with pytest.raises(PlanRefused, match="not switched yet"):
        _plan(CARotationPhase.RETIRE, _staged())
    with pytest.raises(PlanRefused, match="finish this rotation"):
        _plan(CARotationPhase.STAGE, _switched())


def test_switch_sets_the_default_then_only_converges_leaves():
    result = _plan(CARotationPhase.SWITCH, _staged())
    assert [a.kind for a in result.actions] == ["set-default"] and result.converge_leaves
    again = _plan(CARotationPhase.SWITCH, _switched())
    assert again.actions == [] and again.converge_leaves


def test_retire_refuses_while_a_leaf_chains_to_the_old_root_and_names_it():
    with pytest.raises(PlanRefused, match="1 certificate.*cp-1/pki/etcd/server.crt"):
        _plan(CARotationPhase.RETIRE, _switched(), [OLD_LEAF, NEW_LEAF])
    forced = _plan(CARotationPhase.RETIRE, _switched(), [OLD_LEAF, NEW_LEAF], force=True)
    assert forced.stranded == ("cp-1/pki/etcd/server.crt",)


def test_retire_keeps_the_old_root_until_its_last_leaf_expired():
    result = _plan(CARotationPhase.RETIRE, _switched(), [NEW_LEAF])
    assert [a.kind for a in result.actions] == ["chain-issuer", "retire-issuer", "delete-issuer"]
    assert result.retired_as == "retired-g1-until-20261202t120000z"
    retired = IssuerView("id-old", result.retired_as, OLD, "k-old", frozenset({"crl-signing", "read-only"}))
    after = [retired, _new(default=True)]
    assert _plan(CARotationPhase.RETIRE, after).actions == []
    later = _plan(CARotationPhase.RETIRE, after, now=NOW + TTL)
    assert [(a.kind, a.target) for a in later.actions] == [
        ("delete-issuer", f"{MOUNT}/issuer/{result.retired_as}"), ("delete-key", f"{MOUNT}/key/k-old")]


def test_leaves_are_counted_per_root_not_per_cross_signed_twin():
    counts = plan.leaves_by_issuer([OLD_LEAF, NEW_LEAF], _switched())
    assert counts == {"id-old": [OLD_LEAF.target], "id-new": [NEW_LEAF.target]}


def test_a_mount_with_two_rotations_roots_is_refused():
    third = IssuerView("id-3", "root-g3", NEW, "k-3", ALL)
    with pytest.raises(PlanRefused, match="more than one rotation"):
        plan.classify(MOUNT, [*_staged(), third])
