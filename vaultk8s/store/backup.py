"""A node directory as it was before vaultk8s touched it (`adopt` writes one, 0600): a tar to go
back to (docs/adopt.md). It holds the CA keys: keep it off the node, offline."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Mapping

from vaultk8s.store.atomic import FileContent, secret, write_file_in_place

MTIME = 0  # the same tree gives the same bytes


def tar_bytes(files: Mapping[str, FileContent]) -> bytes:
    """An uncompressed tar of files (relative paths, their modes), in path order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(files):
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(files[rel].data), files[rel].mode, MTIME
            tar.addfile(info, io.BytesIO(files[rel].data))
    return buffer.getvalue()


def write_backup(path: Path, files: Mapping[str, FileContent]) -> bool:
    """Write the backup once: an existing one is the earlier, truer 'before' and is kept (False)."""
    if path.exists():
        return False
    return write_file_in_place(path, secret(tar_bytes(files)))
