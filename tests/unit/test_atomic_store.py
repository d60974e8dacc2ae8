"""The AtomicWriter-style payload directory: modes, no-ops, swaps, and readers never torn."""

import os
import stat
import threading
from pathlib import Path

import pytest

from vaultk8s.errors import StoreError
from vaultk8s.store.atomic import PayloadDir, public, secret, write_file
from vaultk8s.store.layout import NodeOutput


def test_update_writes_symlinked_files_with_modes(tmp_path):
    pki = PayloadDir(tmp_path / "pki")
    assert pki.update({"a.crt": public(b"A"), "a.key": secret(b"K"), "etcd/ca.crt": public(b"E")})
    assert (tmp_path / "pki" / "a.crt").read_bytes() == b"A"
    assert (tmp_path / "pki" / "etcd" / "ca.crt").read_bytes() == b"E"
    assert os.path.islink(tmp_path / "pki" / "a.key")
    assert stat.S_IMODE(os.stat(tmp_path / "pki" / "a.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "pki" / "a.crt").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "pki").st_mode) == 0o700


def test_unchanged_update_is_a_no_op_and_old_versions_are_removed(tmp_path):
    pki = PayloadDir(tmp_path / "pki")
    pki.update({"a.crt": public(b"A")})
    first = os.readlink(tmp_path / "pki" / "..data")
    assert pki.update({"a.crt": public(b"A")}) is False
    assert os.readlink(tmp_path / "pki" / "..data") == first
    assert pki.update({"a.crt": public(b"B"), "b.crt": public(b"C")})
    assert pki.update({"b.crt": None})
    assert not (tmp_path / "pki" / "b.crt").exists()
    versions = [p for p in (tmp_path / "pki").iterdir() if p.name.startswith("..2")]
    assert len(versions) == 1


def test_plain_files_from_kubeadm_are_migrated(tmp_path):
    (tmp_path / "pki" / "etcd").mkdir(parents=True)
    (tmp_path / "pki" / "old.crt").write_bytes(b"O")
    (tmp_path / "pki" / "etcd" / "x.crt").write_bytes(b"X")
    PayloadDir(tmp_path / "pki").update({"new.crt": public(b"N")})
    assert (tmp_path / "pki" / "old.crt").read_bytes() == b"O"
    assert (tmp_path / "pki" / "etcd" / "x.crt").read_bytes() == b"X"
    assert os.path.islink(tmp_path / "pki" / "etcd")


def test_plain_files_are_linked_as_they_are_before_new_content(tmp_path, monkeypatch):
    """kubeadm's apiserver.crt/key: the first version holds the old pair, the second the new one, so
    a key link never points at a new key while the cert beside it is still the old plain file; the
    plain etcd/ is exchanged for its link (renameat2), never removed first."""
    from vaultk8s.store import atomic

    (tmp_path / "pki" / "etcd").mkdir(parents=True)
    (tmp_path / "pki" / "a.crt").write_bytes(b"old")
    (tmp_path / "pki" / "a.key").write_bytes(b"old")
    (tmp_path / "pki" / "etcd" / "x.crt").write_bytes(b"X")
    published, removed = [], []
    real_publish, real_rmtree = atomic.PayloadDir._publish, atomic.shutil.rmtree
    monkeypatch.setattr(atomic.PayloadDir, "_publish",
                        lambda self, files, previous: published.append(files["a.key"].data)
                        or real_publish(self, files, previous))
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda path, **kw: removed.append(os.path.islink(
        tmp_path / "pki" / "etcd")) or real_rmtree(path, **kw))
    assert PayloadDir(tmp_path / "pki").update({"a.crt": public(b"new"), "a.key": secret(b"new")})
    assert published == [b"old", b"new"]
    assert removed and all(removed)  # etcd/ was already the link whenever a directory was removed
    assert (tmp_path / "pki" / "etcd" / "x.crt").read_bytes() == b"X"
    assert [p.name for p in (tmp_path / "pki").iterdir() if p.name.endswith(".tmp")] == []


def test_remove_ca_keys_removes_only_them(tmp_path):
    (tmp_path / "cp-1" / "pki" / "etcd").mkdir(parents=True)
    for rel in ("ca.crt", "ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key"):
        (tmp_path / "cp-1" / "pki" / rel).write_bytes(b"x")
    assert NodeOutput(tmp_path, "cp-1").remove_ca_keys()
    pki = tmp_path / "cp-1" / "pki"
    assert [rel for rel in ("ca.crt", "ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key")
            if (pki / rel).exists()] == ["ca.crt", "sa.key"]
    assert NodeOutput(tmp_path, "cp-1").remove_ca_keys() is False


def test_refuses_paths_outside_and_ca_keys(tmp_path):
    with pytest.raises(StoreError):
        PayloadDir(tmp_path / "pki").update({"../evil": public(b"x")})
    with pytest.raises(StoreError, match="CA private key"):
        NodeOutput(tmp_path, "cp-1").update_pki({"etcd/ca.key": secret(b"x")})
    assert not (tmp_path / "cp-1" / "pki" / "etcd").exists()


def test_reader_never_sees_a_mismatched_pair(tmp_path):
    """A reader resolving ..data once always gets a cert and key from the same version."""
    pki = PayloadDir(tmp_path / "pki")
    pki.update({"x.crt": public(b"0"), "x.key": secret(b"0")})
    stop = threading.Event()
    torn, reads = [], []

    def reader():
        while not stop.is_set():
            version = os.path.realpath(tmp_path / "pki" / "..data")
            try:
                pair = (Path(version, "x.crt").read_bytes(), Path(version, "x.key").read_bytes())
            except FileNotFoundError:
                continue  # the old version was removed under us: a reader retries, it never mixes
            reads.append(pair[0])
            if pair[0] != pair[1]:
                torn.append(pair)

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(1, 200):
        value = str(i).encode()
        pki.update({"x.crt": public(value), "x.key": secret(value)})
    stop.set()
    thread.join()
    assert torn == [] and len(set(reads)) > 1  # it read while versions changed (an exception in it would only warn)


def test_write_file_is_atomic_and_idempotent(tmp_path):
    target = tmp_path / "d" / "admin.conf"
    assert write_file(target, secret(b"one"))
    assert write_file(target, secret(b"one")) is False
    assert write_file(target, secret(b"two"))
    assert target.read_bytes() == b"two" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["admin.conf"]


def test_backup_leaves_the_mode_of_its_directory_alone(tmp_path):
    """adopt writes /etc/kubernetes.before-vaultk8s.tar: /etc must keep its 0755."""
    from vaultk8s.store.backup import write_backup

    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    etc.chmod(0o755)
    assert write_backup(etc / "kubernetes.before-vaultk8s.tar", {"pki/ca.key": secret(b"k")})
    assert stat.S_IMODE(etc.stat().st_mode) == 0o755
    assert stat.S_IMODE((etc / "kubernetes.before-vaultk8s.tar").stat().st_mode) == 0o600
    assert write_backup(etc / "kubernetes.before-vaultk8s.tar", {}) is False  # the first one is kept
