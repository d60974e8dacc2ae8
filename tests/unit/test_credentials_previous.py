"""Which secret_id writing credentials over a directory destroys, and what a refused destroy leaves."""

from __future__ import annotations

from vaultk8s.errors import PermissionDeniedError, VaultError
from vaultk8s.ops import node


def _dir(tmp_path, role_id="role-a", mount="approle", secret_id="s-1"):
    tmp_path.mkdir()
    for name, value in ((node.ROLE_ID_FILE, role_id), (node.MOUNT_FILE, mount), (node.SECRET_ID_FILE, secret_id)):
        if value is not None:
            (tmp_path / name).write_text(value)
    return tmp_path


def test_only_a_secret_id_of_the_same_role_and_mount_is_taken_as_held(tmp_path):
    assert node._held_secret_id(_dir(tmp_path / "same"), "approle", "role-a") == "s-1"
    assert node._held_secret_id(_dir(tmp_path / "other-role", role_id="role-b"), "approle", "role-a") is None
    assert node._held_secret_id(_dir(tmp_path / "other-mount", mount="elsewhere"), "approle", "role-a") is None
    assert node._held_secret_id(_dir(tmp_path / "no-secret", secret_id=None), "approle", "role-a") is None
    assert node._held_secret_id(_dir(tmp_path / "empty", secret_id="\n"), "approle", "role-a") is None
    assert node._held_secret_id(tmp_path / "missing", "approle", "role-a") is None


class _Gateway:
    def __init__(self, refuse: Exception | None = None):
        self.refuse, self.destroyed = refuse, []

    def destroy_secret_id(self, mount, role, secret_id):
        if self.refuse is not None:
            raise self.refuse
        self.destroyed.append((mount, role, secret_id))


def test_a_destroyed_previous_is_reported_and_a_refused_one_warns_without_the_secret(tmp_path):
    done = node.CredentialsReport("worker-1")
    gateway = _Gateway()
    node._destroy_previous(gateway, "approle", "node-worker-1", "s-old", tmp_path, done)
    assert gateway.destroyed == [("approle", "node-worker-1", "s-old")]
    assert done.previous_secret_id == node.PREVIOUS_DESTROYED and done.warnings == []

    kept = node.CredentialsReport("worker-1")
    denied = PermissionDeniedError("Vault denied permission to destroy a secret_id at auth/approle/role/x (403)")
    node._destroy_previous(_Gateway(denied), "approle", "node-worker-1", "s-old", tmp_path, kept)
    assert kept.previous_secret_id == node.PREVIOUS_KEPT
    assert len(kept.warnings) == 1 and "policy apply" in kept.warnings[0] and "s-old" not in kept.warnings[0]
    assert kept.to_dict()["previous_secret_id"] == "kept"


def test_an_outage_during_the_destroy_does_not_blame_the_policy(tmp_path):
    report = node.CredentialsReport("csr-signer")
    down = VaultError("Vault at https://127.0.0.1:8200 is sealed or down: unseal it and retry")
    node._destroy_previous(_Gateway(down), "approle", "csr-signer", "s-old", tmp_path, report)
    assert report.previous_secret_id == node.PREVIOUS_KEPT
    assert "sealed or down" in report.warnings[0] and "policy apply" not in report.warnings[0]
