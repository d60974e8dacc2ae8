"""One-off probe (issue 18): what a reader sees while PayloadDir converts a kubeadm pki/ of plain files.

A reader process (another core) loads cert+key pairs the way etcd does on every TLS handshake
(open both files, check that the key matches the certificate) in a tight loop, while this process
converts a plain-file pki/ to the `..data` layout, many times over:

  one-step             PayloadDir(pki).update(new pairs) on the plain files: the first version
                       already holds the new certificates (what `bootstrap --out` does today on a
                       kubeadm tree)
  step-1-same-content  PayloadDir(pki).update({}) on the plain files (same content)
  step-2-swap          update(new pairs) on a tree step 1 converted: one `..data` swap

It counts, per scenario, reads that found a file missing (ENOENT) and pairs that did not match,
separately for a top-level pair (apiserver.crt/key) and one in the `etcd/` subdirectory (which
PayloadDir replaces by removing the plain directory, then creating the link).

    python3 scripts/probe_payload_conversion.py [--rounds 300]

Needs only `cryptography` and the vaultk8s package (no binaries, no Vault). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402

from tests.helpers.kubeadm_cluster import cert_pem, issue, key_pem, new_ca  # noqa: E402
from vaultk8s.store.atomic import PayloadDir, public, secret  # noqa: E402

PAIRS = ("apiserver", "etcd/server")


def _reader(pki: str, ready, stop, out) -> None:
    """Load each pair over and over until stop; send (reads, missing, mismatch) per pair."""
    local = {f"{p}:{kind}": 0 for p in PAIRS for kind in ("reads", "missing", "mismatch")}
    while not stop.is_set():
        for pair in PAIRS:
            local[f"{pair}:reads"] += 1
            try:
                cert = x509.load_pem_x509_certificate(Path(pki, f"{pair}.crt").read_bytes())
                key = serialization.load_pem_private_key(Path(pki, f"{pair}.key").read_bytes(), None)
            except FileNotFoundError:
                local[f"{pair}:missing"] += 1
                continue
            except ValueError:  # a torn file would show here; none is expected (renames)
                local[f"{pair}:mismatch"] += 1
                continue
            if cert.public_key().public_numbers() != key.public_key().public_numbers():
                local[f"{pair}:mismatch"] += 1
        ready.set()
    out.send(local)


def _plain_tree(pki: Path, pairs: dict[str, tuple[bytes, bytes]]) -> None:
    shutil.rmtree(pki, ignore_errors=True)
    (pki / "etcd").mkdir(parents=True)
    for base, (crt, key) in pairs.items():
        (pki / f"{base}.crt").write_bytes(crt)
        (pki / f"{base}.key").write_bytes(key)
        os.chmod(pki / f"{base}.key", 0o600)
    (pki / "ca.crt").write_bytes(b"placeholder\n")  # other plain files kubeadm leaves
    (pki / "etcd" / "ca.crt").write_bytes(b"placeholder\n")


def run(rounds: int) -> dict:
    """Per scenario and round: a new plain tree, a reader started on it, one conversion, the reader stopped."""
    ca, ca_key = new_ca("probe-ca", kind="ec")

    def pair(name: str) -> tuple[bytes, bytes]:
        cert, key = issue(ca, ca_key, name, server=True)
        return cert_pem(cert), key_pem(key)

    old = {base: pair(base) for base in PAIRS}
    new = {base: pair(base) for base in PAIRS}
    changes = {}
    for base, (crt, key) in new.items():
        changes[f"{base}.crt"] = public(crt)
        changes[f"{base}.key"] = secret(key)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in ("one-step", "step-1-same-content", "step-2-swap"):
            totals: dict[str, int] = {}
            started = time.monotonic()
            for index in range(rounds):
                pki = Path(tmp) / f"{scenario}-{index}" / "pki"
                _plain_tree(pki, old)
                if scenario == "step-2-swap":
                    PayloadDir(pki).update({})  # converted before the reader starts
                context = multiprocessing.get_context("fork")
                ready, stop = context.Event(), context.Event()
                receive, send = context.Pipe(duplex=False)
                reader = context.Process(target=_reader, args=(str(pki), ready, stop, send))
                reader.start()
                try:
                    ready.wait(10)
                    PayloadDir(pki).update({} if scenario == "step-1-same-content" else changes)
                finally:
                    stop.set()
                    counts = receive.recv() if receive.poll(30) else {}
                    reader.join(30)
                    if reader.is_alive():
                        reader.kill()
                for name, value in counts.items():
                    totals[name] = totals.get(name, 0) + value
                shutil.rmtree(pki.parent)
            results[scenario] = {"rounds": rounds, "seconds": round(time.monotonic() - started, 1), **totals}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.rounds), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
