"""Atomic file output, after Kubernetes' AtomicWriter.

A payload directory (a node's `pki/`) holds only symlinks: `name -> ..data/name`, and `..data`
points at a timestamped version directory. A new version is written in full beside the old one,
then `..data` is swapped with one rename, so every cert and its key change together and a reader
never sees a torn file or a cert from one version with a key from another.
Single files (kubeconfigs) are replaced with write-temp-fsync-rename.

Crash safety (SIGKILL anywhere): temp files are created 0600 whatever their final mode, so one
left behind is readable by nobody else; a version directory or temp link a killed writer left is
removed by the next update (under the lock); within a payload, key links are made before the
cert links, so a crash between two links shows at worst a key without its cert, never the reverse.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Mapping

from vaultk8s.crashpoint import crash_point
from vaultk8s.errors import StoreError

DATA_LINK = "..data"
LOCK_FILE = "..lock"
KEY_MODE = 0o600
PUBLIC_MODE = 0o644
DIR_MODE = 0o700
STALE_TMP_SECONDS = 60  # a single file's temp older than this was left by a killed writer


@dataclass(frozen=True)
class FileContent:
    data: bytes
    mode: int = PUBLIC_MODE


def secret(data: bytes) -> FileContent:
    return FileContent(data, KEY_MODE)


def public(data: bytes) -> FileContent:
    return FileContent(data, PUBLIC_MODE)


def ensure_dir(path: Path) -> None:
    try:
        try:
            found = os.stat(path)  # the common case, a directory already there: one call
        except FileNotFoundError:
            found = None
        if found is None or not stat.S_ISDIR(found.st_mode):
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)  # a file in the way: FileExistsError
            found = os.stat(path)
        if stat.S_IMODE(found.st_mode) != DIR_MODE:  # a chmod is a metadata write: only when needed
            os.chmod(path, DIR_MODE)
    except OSError as err:
        raise StoreError(f"cannot create directory {path}: {err.strerror}") from None


def check_writable(path: Path) -> None:
    """Fail before any Vault call when the output directory cannot be written; writes nothing.

    The directory is created, and its mode set, only when the first file is written.
    """
    target = Path(path)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        raise StoreError(f"cannot write to {target}: {existing} is a dangling symlink")
    if not existing.is_dir():
        raise StoreError(f"cannot write to {target}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write to {target}: {existing} is not writable")
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise StoreError(f"cannot write to {target}: {existing} is on a read-only file system")


def write_file(path: Path, content: FileContent) -> bool:
    """Replace one file atomically. Returns False (and touches nothing) when it already matches."""
    return _write_if_changed(path, content, make_parent=True)


def write_file_in_place(path: Path, content: FileContent) -> bool:
    """write_file into a directory vaultk8s does not own (`/etc` for adopt's backup, a kubeadm
    directory): it must exist, and its mode is left as it is (write_file would make it 0700)."""
    return _write_if_changed(path, content, make_parent=False)


def _write_if_changed(path: Path, content: FileContent, make_parent: bool) -> bool:
    if _read_with_mode(path) == (content.data, content.mode):
        return False
    if make_parent:
        ensure_dir(path.parent)
    elif not path.parent.is_dir():
        raise StoreError(f"cannot write {path}: {path.parent} is not a directory")
    try:
        replace_file(path, content)
    except OSError as err:
        raise StoreError(f"cannot write {path}: {err.strerror}") from None
    return True


def replace_file(path: Path, content: FileContent) -> None:
    """write_file's atomic replace alone, for callers that own their directory and their errors
    (dev/, hsm/devtoken.py): the directory must exist, and OSError propagates.

    The temp beside path has a random name and is created 0600, so a killed writer's leftover is
    readable by nobody else (and removed by a later write); it is fsynced, given its final mode,
    renamed over path, and the directory is fsynced.
    """
    _remove_stale_tmps(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        _write_new(tmp, FileContent(content.data, KEY_MODE))
        crash_point("file-tmp")
        if content.mode != KEY_MODE:
            os.chmod(tmp, content.mode)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_tmps(path: Path) -> None:
    """Temps of this file left by a killed writer (old enough not to be a live writer's)."""
    now, prefix = time.time(), f".{path.name}."
    for entry in _scandir(path.parent):
        if entry.name.startswith(prefix) and entry.name.endswith(".tmp") and len(entry.name) > len(prefix) + 4:
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                    os.unlink(entry.path)


def remove_file(path: Path) -> bool:
    """Delete path (True when it existed); the directory entry's removal is made durable."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as err:
        raise StoreError(f"cannot delete {path}: {err.strerror}") from None
    _fsync_dir(path.parent)
    return True


def read_file(path: Path) -> bytes | None:
    found = _read_with_mode(path)
    return found[0] if found is not None else None


class PayloadDir:
    """A directory of files that are always replaced together (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self, rel: str) -> bytes | None:
        return read_file(self.path / rel)

    def snapshot(self) -> dict[str, FileContent]:
        """Every file of the current version, by relative path."""
        current = self._current_version()
        if current is None:
            return self._legacy_files()
        return _read_tree(current)

    def update(self, changes: Mapping[str, FileContent | None]) -> bool:
        """Apply changes (None removes a file) as one new version. False when nothing changed."""
        ensure_dir(self.path)
        with locked(self.path / LOCK_FILE):  # the current version is ours to change until the lock goes
            current = self._current_version()
            self._remove_leftovers(current)
            if current is not None and all(_holds(current, rel, c) for rel, c in changes.items()):
                return False  # the common re-run: compare only the changed files, not every file
            old = _read_tree(current) if current is not None else self._legacy_files()
            new = dict(old)
            for rel, content in changes.items():
                _check_rel(rel)
                if content is None:
                    new.pop(rel, None)
                else:
                    new[rel] = content
            if new == old and current is not None:
                self._link_top_level({rel.split("/")[0] for rel in new})  # finishes a killed publish
                return False
            if current is None and old and new != old:
                # Plain files (kubeadm's): linked as they are first, then the new version swapped in,
                # so no reader sees a new key beside an old certificate (docs/adopt-facts.md, 5 and 12).
                self._publish(old, None)
                current = self._current_version()
            self._publish(new, current)
        return True

    def _publish(self, files: dict[str, FileContent], previous: Path | None) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y_%m_%d_%H_%M_%S")
        version = self.path / f"..{stamp}.{secrets.token_hex(4)}"
        try:
            os.mkdir(version, DIR_MODE)
            for rel, content in files.items():
                target = version / rel
                if "/" in rel:
                    target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                _write_new(target, content)
            _fsync_dir(version)
            crash_point("payload-written")
            _swap_link(self.path / DATA_LINK, version.name)
            crash_point("payload-swapped")
            self._link_top_level({rel.split("/")[0] for rel in files})
        except OSError as err:
            if self._current_version() != version:
                shutil.rmtree(version, ignore_errors=True)
            raise StoreError(f"cannot write {self.path}: {err.strerror}") from None
        if previous is not None and previous != version:
            shutil.rmtree(previous, ignore_errors=True)

    def _link_top_level(self, names: set[str]) -> None:
        changed = False
        entries = {e.name: e for e in _scandir(self.path)}  # d_type: no stat per entry
        for name in sorted(names, key=_keys_first):
            entry, want = entries.get(name), f"{DATA_LINK}/{name}"
            if entry is not None and entry.is_symlink() and os.readlink(entry.path) == want:
                continue
            if entry is not None and entry.is_dir(follow_symlinks=False):
                _replace_dir_with_link(self.path / name, want)  # a plain directory (kubeadm's etcd/) is migrated
            else:
                _swap_link(self.path / name, want)
            changed = True
            crash_point("payload-link")
        gone = [e for e in entries.values() if e.is_symlink() and e.name not in names and not e.name.startswith(".")]
        for entry in sorted(gone, key=lambda e: _keys_first(e.name), reverse=True):  # certs go first
            os.unlink(entry.path)
            changed = True
        if changed:
            _fsync_dir(self.path)

    def _remove_leftovers(self, current: Path | None) -> None:
        """Version dirs and temp links of a writer killed mid-publish (we hold the lock: none is live)."""
        for entry in _scandir(self.path):
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                if entry.is_symlink():
                    os.unlink(entry.path)
                else:  # a plain directory exchanged for its link, not yet removed
                    shutil.rmtree(entry.path, ignore_errors=True)
            elif (entry.name.startswith("..") and entry.name not in (DATA_LINK, LOCK_FILE)
                  and entry.is_dir(follow_symlinks=False) and (current is None or entry.name != current.name)):
                shutil.rmtree(entry.path, ignore_errors=True)

    def _current_version(self) -> Path | None:
        try:
            target = self.path / os.readlink(self.path / DATA_LINK)
        except OSError:  # missing, or not a link
            return None
        return target if target.is_dir() else None

    def _legacy_files(self) -> dict[str, FileContent]:
        """Plain files left by an earlier tool are carried into the first version."""
        if not self.path.is_dir():
            return {}
        return {rel: c for rel, c in _read_tree(self.path).items() if not rel.startswith("..")}



@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on path (created 0600 when missing) for the with block: one writer at a time."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, KEY_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _holds(version: Path, rel: str, content: FileContent | None) -> bool:
    """The version already has rel as content (None: has no rel)."""
    _check_rel(rel)
    if content is None:
        return not (version / rel).exists()
    found = _read_with_mode(version / rel)
    return found is not None and found[0] == content.data and (found[1] or PUBLIC_MODE) == content.mode


def _read_with_mode(path: Path) -> tuple[bytes, int] | None:
    """A file's bytes and permission bits through one descriptor; None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read(), stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise StoreError(f"cannot read {path}: {err.strerror}") from None


def _scandir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as entries:
        return list(entries)


def _keys_first(name: str) -> tuple[bool, str]:
    return (not name.endswith(".key"), name)


def _read_tree(root: Path) -> dict[str, FileContent]:
    files: dict[str, FileContent] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith("..")]
        for name in filenames:
            if name.startswith(".."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            files[rel] = FileContent(path.read_bytes(), _mode(path) or PUBLIC_MODE)
    return files


def _write_new(path: Path, content: FileContent) -> None:
    # Created with its final mode, so a key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, content.mode)
    try:
        os.fchmod(fd, content.mode)
        os.write(fd, content.data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_link(link: Path, target: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.symlink(target, link)  # a new name: creating the link is already atomic
        return
    tmp = link.parent / f".{link.name}.{secrets.token_hex(4)}.tmp"
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _replace_dir_with_link(entry: Path, target: str) -> None:
    """A plain directory becomes a link to target in one step: renameat2(RENAME_EXCHANGE) swaps the
    two names, so a reader never finds the directory missing (measured: remove-then-link left
    etcd/ missing for 325 of ~10,000 reads, docs/adopt-facts.md 12); the old directory, now under
    the temp name, is removed after. Where the exchange is not available: remove, then link."""
    tmp = entry.parent / f".{entry.name}.{secrets.token_hex(4)}.tmp"
    os.symlink(target, tmp)
    if _exchange(tmp, entry):
        shutil.rmtree(tmp)
        return
    tmp.unlink()
    shutil.rmtree(entry)
    _swap_link(entry, target)


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two names (Linux renameat2); False when the libc, kernel or file system cannot."""
    import ctypes  # here: only the in-place conversion of a kubeadm tree swaps directories

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def _check_rel(rel: str) -> None:
    parts = rel.split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") or p.startswith("..") for p in parts):
        raise StoreError(f"refusing to write outside the payload directory: {rel!r}")
