"""`vaultk8s status` planning: the due rules, ordering, issuer kinds, Vault's times. Pure, fixed clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from vaultk8s.plan import status as plan
from vaultk8s.plan.naming import retired_name
from vaultk8s.plan.status import IssuerFacts, Lifetime, Renewal

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
WARN = timedelta(days=30)


def _item(kind, name, after, renewal, before=None):
    return Lifetime(kind, name, None if after is None else NOW + after, renewal, "someone", "",
                    None if before is None else NOW + before)


def test_due_rules():
    # automatic: due from 2/3 of its life on (a 3-day leaf issued 2.1 days ago), not before
    assert plan.is_due(_item("leaf", "a", DAY * 0.9, Renewal.AUTOMATIC, -DAY * 2.1), NOW, WARN)
    assert not plan.is_due(_item("leaf", "b", DAY * 1.1, Renewal.AUTOMATIC, -DAY * 1.9), NOW, WARN)
    assert plan.is_due(_item("leaf", "c", -DAY, Renewal.AUTOMATIC), NOW, WARN)  # expired, no not_before
    # a person: within --warn
    assert plan.is_due(_item("ca-root", "d", DAY * 29, Renewal.PERSON), NOW, WARN)
    assert not plan.is_due(_item("ca-root", "e", DAY * 31, Renewal.PERSON), NOW, WARN)
    assert not plan.is_due(_item("ca-root", "e", DAY * 31, Renewal.PERSON), NOW, timedelta(hours=1))
    # a deadline: once reached; lapsing things and things without end: never
    assert plan.is_due(_item("sa-key", "f", -DAY, Renewal.DEADLINE), NOW, WARN)
    assert not plan.is_due(_item("sa-key", "g", DAY, Renewal.DEADLINE), NOW, WARN)
    assert not plan.is_due(_item("enrolment", "h", -DAY, Renewal.LAPSES), NOW, WARN)
    assert not plan.is_due(_item("signer-credential", "i", None, Renewal.PERSON), NOW, WARN)


def test_report_is_soonest_first_with_no_end_last_and_names_what_is_due():
    items = [_item("ca-root", "late", DAY * 3000, Renewal.PERSON), _item("enrolment", "never", None, Renewal.LAPSES),
             _item("signer-credential", "soon", DAY * 2, Renewal.PERSON), _item("token", "now", DAY / 24, Renewal.LAPSES)]
    report = plan.plan_status(items, NOW, WARN, ["a note"])
    data = report.to_dict()
    assert [i["name"] for i in data["items"]] == ["now", "soon", "late", "never"]
    assert data["due"] == ["soon"] and data["notes"] == ["a note"]
    assert data["items"][0]["not_after"] == "2026-12-03T13:00:00Z" and data["items"][3]["not_after"] is None
    assert set(data["items"][0]) >= {"kind", "name", "not_after", "renewed_by", "due", "detail"}


def test_issuer_kinds_every_generation():
    def facts(issuer_id, key_id, self_signed, default=False):
        return IssuerFacts("k8s-ca", issuer_id, issuer_id, key_id, self_signed, f"CN={issuer_id}", NOW + DAY, default, 1)

    kinds = {i.name: (i.kind, i.detail) for i in plan.issuer_lifetimes([
        facts("old-root", "k1", True), facts("new-root", "k2", True, default=True),
        facts("new-cross", "k2", False), facts("hsm-root", "", True), facts("intermediate", "k3", False)])}
    assert kinds["k8s-ca/issuer/old-root"][0] == plan.CA_ROOT
    assert kinds["k8s-ca/issuer/new-root"] == (plan.CA_ROOT, "CN=new-root; default issuer")
    assert kinds["k8s-ca/issuer/new-cross"][0] == plan.CA_CROSS_SIGNED
    assert kinds["k8s-ca/issuer/hsm-root"] == (plan.CA_ROOT, "CN=hsm-root; HSM root: its key is in the PKCS#11 token")
    assert kinds["k8s-ca/issuer/intermediate"][0] == plan.CA_INTERMEDIATE


def test_vault_times():
    assert plan.vault_time("2026-12-03T05:57:54.123456789Z") == datetime(2026, 12, 3, 5, 57, 54, 123456, timezone.utc)
    assert plan.vault_time("2026-12-03T05:57:54+01:00") == datetime(2026, 12, 3, 4, 57, 54, tzinfo=timezone.utc)
    for none in ("0001-01-01T00:00:00Z", "", None, "yesterday", 5):
        assert plan.vault_time(none) is None


def test_sa_keys_by_age_against_policy():
    from vaultk8s import crypto
    from vaultk8s.config import SASettings
    from vaultk8s.plan import sa

    settings = SASettings("rsa-2048", "kv", "demo/service-account", timedelta(hours=48), "https://i", DAY * 365)
    first = sa.initial(sa.new_key(crypto.generate_key("ec-p256"), NOW - DAY * 400), NOW - DAY * 400)
    staged = sa.apply_phase(first, sa.SARotationPhase.STAGE, NOW - DAY, settings.grace_period,
                            new=sa.new_key(crypto.generate_key("ec-p256"), NOW - DAY))
    promoted = sa.apply_phase(staged, sa.SARotationPhase.PROMOTE, NOW - DAY, settings.grace_period)
    items = {i.detail.split(" ")[0]: i for i in plan.sa_key_lifetimes(promoted, settings)}
    previous, active = items["previous"], items["active"]
    assert previous.not_after == NOW - DAY + timedelta(hours=48) and previous.renewal is Renewal.DEADLINE
    assert active.not_after == NOW - DAY + DAY * 365 and active.renewal is Renewal.PERSON
    assert not plan.is_due(previous, NOW, WARN) and plan.is_due(previous, NOW + DAY * 2, WARN)
    old = {i.detail.split(" ")[0]: i for i in plan.sa_key_lifetimes(first, settings)}["active"]
    assert plan.is_due(old, NOW, WARN)  # 400 days active: past service_account.max_age


def test_a_root_with_serial_zero_is_named_in_the_notes():
    def facts(issuer_id, serial):
        return IssuerFacts("k8s-ca", issuer_id, issuer_id, "k1", True, f"CN={issuer_id}", NOW + 3650 * DAY, True, serial)

    issuers = [facts("kubeadm", 0), facts("vault", 0x2f1a), facts(retired_name(1, NOW + DAY), 0)]
    report = plan.plan_status(plan.issuer_lifetimes(issuers), NOW, WARN, ["a note"])
    assert report.notes[0] == "a note" and len(report.notes) == 2
    assert report.notes[1].startswith("k8s-ca/issuer/kubeadm: serial number 0 ") and "vaultk8s ca rotate" in report.notes[1]
    assert report.due == (False, False, False)  # a note, not a failure: the root is still valid for years
