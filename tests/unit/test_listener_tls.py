"""The dev listener's TLS files over time (dev/listener.py), on a fake clock: made once, the server
certificate re-issued from the same CA once its renewal window opens, a new CA only when the old one
cannot be used. The real server reloading them on SIGHUP is in tests/integration/test_dev_listener.py."""

from __future__ import annotations

import datetime as dt

from cryptography import x509

from vaultk8s.dev.listener import ListenerChange, ListenerTls
from vaultk8s.dev.tls import CA_LIFETIME

T0 = dt.datetime(2026, 12, 7, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_made_once_then_renewed_at_two_thirds_from_the_same_ca(tmp_path):
    tls = ListenerTls(tmp_path, ("openbao",), lifetime=30 * DAY)
    assert tls.ensure(T0) is ListenerChange.CREATED
    ca, first = (tmp_path / "ca.pem").read_bytes(), _cert(tmp_path / "server.pem")
    assert tls.ensure(T0 + 19 * DAY) is ListenerChange.NONE
    assert tls.renew_at() < T0 + 21 * DAY
    assert tls.ensure(T0 + 21 * DAY) is ListenerChange.RENEWED
    second = _cert(tmp_path / "server.pem")
    assert (tmp_path / "ca.pem").read_bytes() == ca and second.serial_number != first.serial_number
    assert second.not_valid_after_utc == T0 + 51 * DAY
    second.verify_directly_issued_by(x509.load_pem_x509_certificate(ca))
    assert tls.ensure(T0 + 22 * DAY) is ListenerChange.NONE  # idempotent


def test_every_renewal_over_years_keeps_a_valid_certificate(tmp_path):
    """Runs past many lifetimes: at no moment of a daily check is the served pair expired."""
    tls = ListenerTls(tmp_path, lifetime=30 * DAY)
    tls.ensure(T0)
    renewals = 0
    for day in range(1, 3 * 365):
        now = T0 + day * DAY
        renewals += tls.ensure(now) is ListenerChange.RENEWED
        assert now < _cert(tmp_path / "server.pem").not_valid_after_utc
    assert renewals >= 3 * 365 // 21


def test_a_volume_without_the_ca_key_keeps_its_certificate_until_due_then_gets_a_new_ca(tmp_path):
    tls = ListenerTls(tmp_path, lifetime=30 * DAY)
    tls.ensure(T0)
    (tmp_path / "ca.key").unlink()  # a compose volume made before the key was kept
    ca = (tmp_path / "ca.pem").read_bytes()
    assert tls.ensure(T0 + DAY) is ListenerChange.NONE and (tmp_path / "ca.pem").read_bytes() == ca
    assert tls.ensure(T0 + 21 * DAY) is ListenerChange.NEW_CA
    assert (tmp_path / "ca.pem").read_bytes() != ca and (tmp_path / "ca.key").is_file()


def test_a_ca_near_its_end_is_replaced_rather_than_cut_short(tmp_path):
    tls = ListenerTls(tmp_path, lifetime=30 * DAY)
    tls.ensure(T0)
    ca = (tmp_path / "ca.pem").read_bytes()
    late = T0 + CA_LIFETIME - 20 * DAY  # the CA cannot cover a whole server lifetime any more
    assert tls.ensure(late) is ListenerChange.NEW_CA and (tmp_path / "ca.pem").read_bytes() != ca
    assert _cert(tmp_path / "server.pem").not_valid_after_utc == late + 30 * DAY


def test_an_unreadable_server_certificate_is_reissued(tmp_path):
    tls = ListenerTls(tmp_path, lifetime=30 * DAY)
    tls.ensure(T0)
    (tmp_path / "server.pem").write_text("torn")
    assert tls.renew_at() is None
    assert tls.ensure(T0 + DAY) is ListenerChange.RENEWED


def _made_with_another(tmp_path):
    """This dir's listener files, and a second set from another CA (in tmp_path/other)."""
    tls = ListenerTls(tmp_path, lifetime=30 * DAY)
    tls.ensure(T0)
    other = tmp_path / "other"
    other.mkdir()
    ListenerTls(other, lifetime=30 * DAY).ensure(T0)
    return tls, other


def test_an_unreadable_or_foreign_ca_key_gets_a_new_ca_not_a_certificate_nobody_trusts(tmp_path):
    tls, other = _made_with_another(tmp_path)
    for key in (b"torn", (other / "ca.key").read_bytes()):
        (tmp_path / "ca.key").write_bytes(key)
        ca = (tmp_path / "ca.pem").read_bytes()
        assert tls.ensure(T0 + 21 * DAY) is ListenerChange.NEW_CA
        assert (tmp_path / "ca.pem").read_bytes() != ca
        _cert(tmp_path / "server.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))
        (tmp_path / "server.pem").unlink()  # due again at once for the next round


def test_a_torn_or_foreign_server_key_is_reissued_from_the_same_ca(tmp_path):
    tls = ListenerTls(tmp_path, lifetime=30 * DAY)
    tls.ensure(T0)
    ca = (tmp_path / "ca.pem").read_bytes()
    for key in (b"torn", (tmp_path / "ca.key").read_bytes()):
        (tmp_path / "server.key").write_bytes(key)
        assert tls.ensure(T0 + DAY) is ListenerChange.RENEWED and (tmp_path / "ca.pem").read_bytes() == ca
        assert tls.ensure(T0 + DAY) is ListenerChange.NONE


def test_a_server_certificate_from_another_ca_is_reissued_from_ca_pem(tmp_path):
    """As a new CA's write cut short between server.pem and ca.pem would leave it."""
    tls, other = _made_with_another(tmp_path)
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_bytes((other / name).read_bytes())
    assert tls.ensure(T0 + DAY) is ListenerChange.RENEWED
    _cert(tmp_path / "server.pem").verify_directly_issued_by(_cert(tmp_path / "ca.pem"))
    assert tls.ensure(T0 + DAY) is ListenerChange.NONE


def test_the_defaults_renew_for_a_decade_and_replace_the_ca_once_near_its_end(tmp_path):
    """825-day certificates, renewed at 550 days from the ten-year CA, checked every five days: never
    lapsed; the CA is replaced once, at the first renewal it cannot cover (day 3300), not before."""
    tls = ListenerTls(tmp_path)
    assert tls.ensure(T0) is ListenerChange.CREATED
    changes = []
    for day in range(5, 11 * 365, 5):
        now = T0 + day * DAY
        change = tls.ensure(now)
        if change is not ListenerChange.NONE:
            changes.append((day, change))
        assert now < _cert(tmp_path / "server.pem").not_valid_after_utc
    assert changes[:6] == [(550, ListenerChange.RENEWED), (1100, ListenerChange.RENEWED),
                           (1650, ListenerChange.RENEWED), (2200, ListenerChange.RENEWED),
                           (2750, ListenerChange.RENEWED), (3300, ListenerChange.NEW_CA)]
