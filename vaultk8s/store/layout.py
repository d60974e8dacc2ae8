"""Where vaultk8s writes: `<out>/<node>/` mirrors that node's /etc/kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from vaultk8s.catalog import CA_KEY_FILES, PKI_DIR
from vaultk8s.errors import StoreError
from vaultk8s.store.atomic import FileContent, PayloadDir, ensure_dir, read_file, write_file


class NodeOutput:
    """One node's directory: `pki/` (an atomic payload) and the kubeconfigs beside it."""

    def __init__(self, out: Path, node: str):
        self.root = Path(out) / node
        self.pki = PayloadDir(self.root / PKI_DIR)

    def read_pki(self, rel: str) -> bytes | None:
        return self.pki.read(rel)

    def update_pki(self, changes: Mapping[str, FileContent | None]) -> bool:
        forbidden = CA_KEY_FILES & set(changes)
        if forbidden:
            # External-CA mode: a CA key on disk is exactly what vaultk8s exists to prevent.
            raise StoreError(f"refusing to write CA private key file(s) {sorted(forbidden)}")
        ensure_dir(self.root)
        return self.pki.update(changes)

    def remove_ca_keys(self) -> bool:
        """Delete the CA private keys kubeadm left in pki/ (`adopt --remove-ca-keys`, once Vault holds
        them): the one change to CA_KEY_FILES allowed, and only a removal. False when none is left."""
        return self.pki.update({rel: None for rel in sorted(CA_KEY_FILES)})

    def read_file(self, name: str) -> bytes | None:
        return read_file(self.root / name)

    def write_file(self, name: str, content: FileContent) -> bool:
        ensure_dir(self.root)
        return write_file(self.root / name, content)


def node_dirs(out: Path) -> list[str]:
    """Names of the node directories present under out (those with a pki/)."""
    out = Path(out)
    if not out.is_dir():
        raise StoreError(f"output directory {out} does not exist")
    return sorted(p.name for p in out.iterdir() if (p / PKI_DIR).is_dir())
