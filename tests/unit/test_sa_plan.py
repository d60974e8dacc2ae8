"""The service-account key-set state machine, with a fixed clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from vaultk8s.config import SASettings, parse_config
from vaultk8s.errors import ConfigError, PlanRefused
from vaultk8s.plan import sa
from vaultk8s.plan.sa import KeyState, SARotationPhase

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
GRACE = timedelta(hours=48)


def _key(now=T0) -> sa.SAKey:
    return sa.new_key(ec.generate_private_key(ec.SECP256R1()), now)


def _states(keys: sa.KeySet) -> list[str]:
    return [k.state.value for k in keys.keys]


@pytest.fixture
def steady() -> sa.KeySet:
    return sa.initial(_key(), T0)


def test_full_rotation(steady):
    staged = sa.stage(steady, _key(), T0 + timedelta(hours=1))
    assert _states(staged) == ["active", "staged"]
    assert staged.active == steady.active  # staging never changes the signing key
    promoted = sa.promote(staged, T0 + timedelta(hours=2))
    assert _states(promoted) == ["previous", "active"]
    assert promoted.keys[0].deactivated == T0 + timedelta(hours=2)
    retired = sa.retire(promoted, T0 + timedelta(hours=50), GRACE)
    assert _states(retired) == ["retired", "active"]
    assert retired.keys[0].private_pem is None  # a retired key can never sign again


def test_pub_and_key_follow_states(steady):
    new = _key()
    staged = sa.stage(steady, new, T0)
    assert sa.pub_pem(staged).count(b"BEGIN PUBLIC KEY") == 2
    assert sa.key_pem(staged) == steady.active.private_pem.encode()
    promoted = sa.promote(staged, T0)
    assert sa.key_pem(promoted) == new.private_pem.encode()
    assert sa.pub_pem(promoted).count(b"BEGIN PUBLIC KEY") == 2
    retired = sa.retire(promoted, T0, GRACE, force=True)
    assert sa.pub_pem(retired) == new.public_pem.strip().encode() + b"\n"


def test_each_phase_is_idempotent(steady):
    staged = sa.stage(steady, _key(), T0)
    assert sa.stage(staged, _key(), T0) == staged
    assert sa.stage(staged, None, T0) == staged
    promoted = sa.promote(staged, T0)
    assert sa.promote(promoted, T0 + timedelta(hours=1)) == promoted
    retired = sa.retire(promoted, T0 + GRACE, GRACE)
    assert sa.retire(retired, T0 + GRACE * 2, GRACE) == retired
    assert sa.retire(steady, T0, GRACE) == steady


@pytest.mark.parametrize("step,message", [
    (lambda s: sa.promote(s, T0), "no key is staged"),
    (lambda s: sa.retire(sa.stage(s, _key(), T0), T0, GRACE), "not promoted yet"),
    (lambda s: sa.stage(sa.promote(sa.stage(s, _key(), T0), T0), _key(), T0), "run `vaultk8s sa rotate --phase retire` first"),
])
def test_out_of_order_is_refused(steady, step, message):
    with pytest.raises(PlanRefused, match=message.replace("`", ".")):
        step(steady)


def test_retire_waits_for_the_grace_period_unless_forced(steady):
    promoted = sa.promote(sa.stage(steady, _key(), T0), T0)
    with pytest.raises(PlanRefused, match=r"grace period 48h, 1h left.*--force"):
        sa.retire(promoted, T0 + GRACE - timedelta(hours=1), GRACE)
    assert _states(sa.retire(promoted, T0 + GRACE, GRACE)) == ["retired", "active"]
    assert _states(sa.retire(promoted, T0, GRACE, force=True)) == ["retired", "active"]


def test_document_round_trip(steady):
    promoted = sa.promote(sa.stage(steady, _key(), T0), T0 + timedelta(minutes=5))
    assert sa.from_document(sa.to_document(promoted)) == promoted
    assert sa.apply_phase(promoted, SARotationPhase.RETIRE, T0, GRACE, force=True).keys[0].state is KeyState.RETIRED


def test_jwt_kid_is_kube_apiservers_kid(steady):
    key = steady.active
    assert len(key.id) == 43 and "=" not in key.id  # base64url(sha256) without padding


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d["keys"][0].update(private_pem="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
     "key #1 has an unreadable private key"),
    (lambda d: d["keys"][0].update(public_pem="garbage"), "key #1 has an unreadable public key"),
    (lambda d: d["keys"][0].update(state="active-ish"), "unknown state"),
    (lambda d: d.update(schema=7), "not a vaultk8s key set"),
    (lambda d: d["keys"].append(dict(d["keys"][0])), "exactly one active key"),
])
def test_corrupt_documents_are_named_without_key_material(steady, mutate, message):
    doc = sa.to_document(steady)
    mutate(doc)
    with pytest.raises(ValueError, match=message) as err:
        sa.from_document(doc)
    assert "BEGIN" not in str(err.value) and "AAAA" not in str(err.value)


def test_mismatched_private_key_is_corrupt(steady):
    doc = sa.to_document(steady)
    doc["keys"][0]["private_pem"] = _key().private_pem
    with pytest.raises(ValueError, match="does not match its public key"):
        sa.from_document(doc)


def test_private_key_never_in_repr(steady):
    assert "PRIVATE" not in repr(steady) and "PRIVATE" not in str(steady.active)


def _config(section):
    data = {
        "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443"},
        "vault": {"mount_prefix": "clusters/demo/"},
        "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}]},
    }
    if section is not None:
        data["service_account"] = section
    return parse_config(data)


def test_settings_defaults():
    settings = _config(None).service_account
    assert settings == SASettings("rsa-2048", "clusters/demo/vaultk8s", "demo/service-account", GRACE)


def test_settings_problems_are_listed_one_per_line():
    with pytest.raises(ConfigError) as err:
        _config({"key_type": "dsa", "grace_period": "10m", "kv_mount": "sys/x", "extra": 1})
    problems = err.value.problems
    assert len(problems) == 4
    assert any("key_type 'dsa'" in p for p in problems)
    assert any("at least 1h" in p for p in problems)


# --- destroying history after retire ------------------------------------------------------------

def _history(*versions, destroyed=(), deleted=()):
    return tuple(sa.StoredVersion(v, v in destroyed, v in deleted) for v in versions)


def test_retire_destroys_every_older_version_still_holding_data(steady):
    retired = sa.retire(sa.promote(sa.stage(steady, _key(), T0), T0), T0, GRACE, force=True)
    # v1 bootstrap, v2 stage, v3 promote, v4 retire; v2 was soft-deleted: undelete would bring it back
    assert sa.destroy_after_retire(retired, 4, _history(1, 2, 3, 4, deleted=(2,))) == (1, 2, 3)
    # the second time round, only what is not destroyed yet (nothing, after a complete retire)
    assert sa.destroy_after_retire(retired, 4, _history(1, 2, 3, 4, destroyed=(1, 2, 3))) == ()
    # a version written after ours (another operator) is never touched; evicted versions are absent
    assert sa.destroy_after_retire(retired, 4, _history(2, 3, 4, 5)) == (2, 3)


@pytest.mark.parametrize("phases", [(), ("stage",), ("stage", "promote")])
def test_history_is_kept_until_a_key_is_retired(steady, phases):
    state = steady
    for phase in phases:
        state = sa.apply_phase(state, SARotationPhase(phase), T0, GRACE, new=_key())
    assert not sa.cleans_history(state)
    assert sa.destroy_after_retire(state, 3, _history(1, 2, 3)) == ()


def test_history_is_kept_while_a_new_rotation_is_under_way(steady):
    retired = sa.retire(sa.promote(sa.stage(steady, _key(), T0), T0), T0, GRACE, force=True)
    restaged = sa.stage(retired, _key(), T0)
    assert sa.cleans_history(retired) and not sa.cleans_history(restaged)
    assert sa.destroy_after_retire(restaged, 5, _history(1, 2, 3, 4, 5)) == ()

