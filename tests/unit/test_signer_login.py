"""The signer's Vault session: JWT login re-reading the token file, re-login at 2/3 of the lease,
login metrics by method and reason; the cluster file's signer/issuer settings; JWT claims read offline."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timezone

import pytest

from vaultk8s.config import parse_config
from vaultk8s.errors import ConfigError, PermissionDeniedError, VaultError, VaultRequestRefused
from vaultk8s.plan import jwt_claims, machine_auth
from vaultk8s.signer.controller import SignerSettings, VaultSigner
from vaultk8s.signer.metrics import SignerMetrics

DOC = {
    "cluster": {"name": "demo", "endpoint": "https://10.0.0.10:6443", "domain": "example.org"},
    "vault": {"mount_prefix": "c1/"},
    "nodes": {"control_plane": [{"name": "cp-1", "ips": ["10.0.0.11"]}]},
}


def _jwt(exp: int | None = 2_000_000_000) -> str:
    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'RS256'})}.{b64({'exp': exp} if exp else {})}.c2ln"


class FakeVault:
    def __init__(self, lease: int = 60, refuse: bool = False):
        self.lease, self.refuse = lease, refuse
        self.logins: list[tuple[str, str, str]] = []
        self.revoked = 0

    def login_jwt(self, mount: str, role: str, jwt: str) -> tuple[str, int]:
        if self.refuse:
            raise VaultRequestRefused("Vault refused to log in at auth/c1/jwt/login: error validating token")
        self.logins.append((mount, role, jwt))
        return f"t{len(self.logins)}", self.lease

    def use_token(self, token: str) -> None:
        self.token = token

    def check_ready(self) -> None:
        pass

    def addresses(self) -> list[str]:  # Vault's own TLS, read at each login: plain HTTP here
        return []

    def trusted_ca_pem(self) -> None:
        return None

    def sign(self, mount, role, csr, ttl):
        raise VaultRequestRefused("not under test")

    def revoke_self(self) -> None:
        self.revoked += 1


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _signer(tmp_path, vault: FakeVault, clock: Clock) -> tuple[VaultSigner, SignerMetrics]:
    token = tmp_path / "token"
    token.write_text(_jwt() + "\n")
    settings = SignerSettings(config=parse_config(DOC), jwt_file=token)
    metrics = SignerMetrics()
    return VaultSigner(lambda: vault, settings, monotonic=clock, metrics=metrics, clock=lambda: 5000.0), metrics


def _value(metrics: SignerMetrics, name: str, **labels) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


def test_jwt_login_rereads_the_file_and_logs_in_again_at_two_thirds_of_the_lease(tmp_path):
    vault, clock = FakeVault(lease=60), Clock()
    signer, metrics = _signer(tmp_path, vault, clock)
    signer.session()
    assert vault.logins == [("c1/jwt", "csr-signer", _jwt())]
    (tmp_path / "token").write_text(_jwt(exp=2_000_000_600))  # kubelet rotated the projected token
    clock.now += 39
    signer.session()
    assert len(vault.logins) == 1
    clock.now += 1  # 40 s = 2/3 of 60 s
    signer.session()
    assert len(vault.logins) == 2 and vault.logins[1][2] == _jwt(exp=2_000_000_600) and vault.revoked == 1
    assert _value(metrics, "vaultk8s_signer_last_login_timestamp_seconds", method="jwt") == 5000.0
    assert _value(metrics, "vaultk8s_signer_vault_token_expiry_timestamp_seconds") == 5060.0
    assert _value(metrics, "vaultk8s_signer_credential_expiry_timestamp_seconds", credential="jwt") == 2_000_000_600


def test_an_expired_session_is_not_revoked_and_a_refused_login_is_counted(tmp_path):
    vault, clock = FakeVault(lease=60), Clock()
    signer, metrics = _signer(tmp_path, vault, clock)
    signer.session()
    clock.now += 61
    vault.refuse = True
    with pytest.raises(VaultError) as refused:
        signer.session()
    assert not isinstance(refused.value, VaultRequestRefused)  # a refused login never fails the CSR
    assert "jwt login was refused" in str(refused.value)
    assert vault.revoked == 0
    assert _value(metrics, "vaultk8s_signer_login_failures_total", method="jwt", reason="rejected") == 1
    (tmp_path / "token").write_text("")
    vault.refuse = False
    with pytest.raises(Exception) as err:
        signer.session()
    assert "--jwt-file" in str(err.value) and "eyJ" not in str(err.value)
    assert _value(metrics, "vaultk8s_signer_login_failures_total", method="jwt", reason="credential-unreadable") == 1


def test_signer_section_and_issuer_default_and_validation():
    config = parse_config(DOC)
    assert config.service_account.issuer == "https://kubernetes.default.svc.example.org"
    assert config.signer.subject == "system:serviceaccount:kube-system:vaultk8s-signer"
    params = machine_auth.signer_jwt_role_params(config)
    assert params["bound_subject"] == config.signer.subject and params["bound_audiences"] == ["vaultk8s"]
    assert params["token_no_default_policy"] is True and params["role_type"] == "jwt"
    other = parse_config({**DOC, "signer": {"namespace": "vaultk8s", "service_account": "signer"}})
    assert other.signer.subject == "system:serviceaccount:vaultk8s:signer"
    with pytest.raises(ConfigError) as err:
        parse_config({**DOC, "signer": {"namespace": "Bad_NS", "extra": 1},
                      "service_account": {"issuer": "http://x", "max_age": "-1h"}})
    text = " ".join(err.value.problems)
    for fragment in ("signer.namespace", "unknown key signer.extra", "service_account.issuer", "max_age"):
        assert fragment in text


def test_jwt_config_drift_ignores_pem_whitespace():
    config = parse_config(DOC)
    want = machine_auth.jwt_config_params(config, ["-----BEGIN PUBLIC KEY-----\nA\n-----END PUBLIC KEY-----"])
    same = {"jwt_validation_pubkeys": ["-----BEGIN PUBLIC KEY-----\nA\n-----END PUBLIC KEY-----"],
            "bound_issuer": config.service_account.issuer}
    assert machine_auth.jwt_config_drift(want, same) == []
    assert machine_auth.jwt_config_drift(want, {**same, "bound_issuer": ""}) == ["bound_issuer"]
    assert machine_auth.jwt_config_drift(want, None) == ["(missing)"]


def test_jwt_claims_never_raise():
    assert jwt_claims.expiry(_jwt(exp=1_700_000_000)) == datetime.fromtimestamp(1_700_000_000, timezone.utc)
    for bad in ("", "a.b", "a.!!!.c", "a." + base64.urlsafe_b64encode(b"[1]").decode() + ".c", _jwt(exp=None)):
        assert jwt_claims.expiry(bad) is None


def test_a_sign_whose_token_another_thread_just_replaced_is_made_once_more_with_the_new_one(tmp_path):
    """--workers: one thread logs in again at 2/3 of the lease and revokes the old token while
    another thread's sign is in flight on it. That sign's 403 issued nothing: it is repeated once
    on the new session instead of failing the whole list into a backoff."""
    clock = Clock()
    gateways: list[FakeVault] = []

    class Revoked(FakeVault):
        def sign(self, mount, role, csr, ttl):
            if self is gateways[0]:
                clock.now += 40
                signer.session()  # the other thread: logs in again, revoking this token
                raise PermissionDeniedError("Vault denied permission to sign (403)")
            return {"certificate": "LEAF"}

    def connect():
        gateways.append(Revoked(lease=60))
        return gateways[-1]

    token = tmp_path / "token"
    token.write_text(_jwt())
    settings = SignerSettings(config=parse_config(DOC), jwt_file=token)
    signer = VaultSigner(connect, settings, monotonic=clock, clock=lambda: 5000.0)
    assert b"LEAF" in signer.sign("c1/kubernetes-ca", "kubelet-client-cp-1", "CSR", 600)
    assert len(gateways) == 2 and gateways[0].revoked == 1


def test_a_403_on_the_current_session_still_fails_and_drops_it(tmp_path):
    class Denied(FakeVault):
        def sign(self, mount, role, csr, ttl):
            raise PermissionDeniedError("Vault denied permission to sign (403)")

    vault, clock = Denied(lease=60), Clock()
    signer, _ = _signer(tmp_path, vault, clock)
    with pytest.raises(PermissionDeniedError):
        signer.sign("c1/kubernetes-ca", "kubelet-client-cp-1", "CSR", 600)
    assert signer._gateway is None  # the next sign logs in again


class FakeAppRole(FakeVault):
    """AppRole side: a secret_id Vault no longer holds is refused (400); lookups say nothing (no end)."""

    def __init__(self, valid: set[str]):
        super().__init__()
        self.valid, self.approle_logins = valid, []

    def login_approle(self, mount, role_id, secret_id):
        self.approle_logins.append(secret_id)
        if secret_id not in self.valid:
            raise VaultRequestRefused("Vault refused to log in at auth/c1/approle/login: invalid role or secret ID")
        return "t"

    def token_ttl(self) -> int:
        return 60

    def lookup_secret_id(self, mount, role, secret_id):
        return {}


def test_a_refused_secret_id_is_not_sent_again_until_the_file_changes(tmp_path):
    """Each refusal counts toward OpenBao's lockout of the role_id (5 lock it for every holder), so a
    secret_id Vault refused once is not tried again: a replica on a stale copy cannot lock the others out."""
    creds = tmp_path / "creds"
    creds.mkdir()
    for name, value in (("role_id", "r"), ("approle_mount", "c1/approle"), ("secret_id", "stale")):
        (creds / name).write_text(value)
    vault, clock = FakeAppRole({"fresh"}), Clock()
    settings = SignerSettings(config=parse_config(DOC), credentials_dir=creds)
    metrics = SignerMetrics()
    signer = VaultSigner(lambda: vault, settings, monotonic=clock, metrics=metrics, clock=lambda: 5000.0)
    for _ in range(3):
        with pytest.raises(VaultError) as refused:
            signer.session()
    assert vault.approle_logins == ["stale"]  # sent once, never again
    assert "not tried again" in str(refused.value) and "signer-credentials --out" in str(refused.value)
    assert "stale" not in str(refused.value)
    assert _value(metrics, "vaultk8s_signer_login_failures_total", method="approle", reason="rejected") == 3
    (creds / "secret_id").write_text("fresh\n")  # the operator wrote a new one
    signer.session()
    assert vault.approle_logins == ["stale", "fresh"]


class RotatingAppRole(FakeAppRole):
    """Secret_ids with Vault's times: made now (wall clock), living `ttl` seconds."""

    def __init__(self, wall, ttl: int):
        super().__init__(set())
        self.wall, self.ttl, self.times, self.destroyed = wall, ttl, {}, []

    def add(self, secret_id: str) -> str:
        self.valid.add(secret_id)
        self.times[secret_id] = self.wall()
        return secret_id

    def lookup_secret_id(self, mount, role, secret_id):
        made = self.times.get(secret_id)
        if made is None:
            return None
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000000001Z")  # noqa: E731
        return {"creation_time": iso(made), "expiration_time": iso(made + self.ttl)}

    def generate_secret_id(self, mount, role, wrap_ttl_seconds=None):
        return self.add(f"s{len(self.times)}")

    def destroy_secret_id(self, mount, role, secret_id):
        self.destroyed.append(secret_id)
        self.valid.discard(secret_id)


def test_the_keeper_logs_in_at_two_thirds_of_the_secret_id_and_replaces_it(tmp_path):
    """Token lease 60 s, secret_id 24 s: the next login is due at 16 s (the secret_id's 2/3, before the
    token's 40 s); that login writes a new secret_id and destroys the old one, and so on."""
    creds = tmp_path / "creds"
    creds.mkdir()
    clock = Clock()
    wall = lambda: clock.now + 1_800_000_000  # noqa: E731 - Vault's times are wall-clock times
    vault = RotatingAppRole(wall, ttl=24)
    for name, value in (("role_id", "r"), ("approle_mount", "c1/approle"), ("secret_id", vault.add("s0"))):
        (creds / name).write_text(value)
    metrics = SignerMetrics()
    signer = VaultSigner(lambda: vault, SignerSettings(config=parse_config(DOC), credentials_dir=creds),
                         monotonic=clock, metrics=metrics, clock=wall)
    assert signer.keep_logged_in() == pytest.approx(16)
    assert vault.approle_logins == ["s0"] and (creds / "secret_id").read_text() == "s0"
    clock.now += 15
    assert signer.keep_logged_in() == pytest.approx(1) and len(vault.approle_logins) == 1  # not due yet
    for n in range(1, 4):
        clock.now += 1 if n == 1 else 16
        assert signer.keep_logged_in() == pytest.approx(16)
        assert (creds / "secret_id").read_text() == f"s{n}" and vault.destroyed == [f"s{i}" for i in range(n)]
    assert vault.approle_logins == ["s0", "s0", "s1", "s2"]  # each login with the one the file held
    assert _value(metrics, "vaultk8s_signer_credential_expiry_timestamp_seconds", credential="secret_id") == \
        pytest.approx(wall() + 24)
    assert vault.revoked == 3  # each earlier token revoked


class SlowTlsVault(FakeVault):
    """One HTTPS node whose TLS handshake hangs until released (a Vault node that does not answer)."""

    def __init__(self):
        super().__init__()
        self.probing, self.release = threading.Event(), threading.Event()

    def addresses(self) -> list[str]:
        return ["https://vault-1:8200"]

    def served_certificate_pem(self, addr):
        self.probing.set()
        self.release.wait(10)
        raise VaultError(f"cannot read the TLS certificate served at {addr}: timed out")


def test_reading_vaults_tls_after_a_login_holds_up_no_other_signing_thread(tmp_path):
    vault, clock = SlowTlsVault(), Clock()
    signer, _ = _signer(tmp_path, vault, clock)
    first = threading.Thread(target=signer.session, daemon=True)
    first.start()  # logs in, then reads Vault's TLS: stuck in the handshake
    assert vault.probing.wait(5)
    other = threading.Thread(target=signer.session, daemon=True)
    other.start()
    other.join(timeout=5)
    try:
        assert not other.is_alive()  # not waiting on the login lock behind the handshake
        assert len(vault.logins) == 1
    finally:
        vault.release.set()
        first.join(timeout=5)
