#!/bin/sh
# The compose demo's one-shot operator job (docs/compose.md): initialise and unseal OpenBao, make
# the PKI, apply the policies, and issue the node's enrolment credential (AppRole secret_id, 24h)
# for its agent, which uses it once and then logs in with the node's own certificate. Idempotent:
# a re-run only unseals, checks, and issues a fresh secret_id (the agent destroys it at its next round;
# one the agent has not used yet is destroyed by the re-run itself).
set -eu
CONFIG=/etc/vaultk8s/cluster.yaml
CREDS=/var/lib/vaultk8s/credentials

# The unseal key and root token stay in this container's `operator` volume.
# (Assigned first: `set -e` does not see a failure inside `eval "$(...)"`.)
exports="$(vaultk8s dev init --addr "$VAULTK8S_OPENBAO_ADDR" --cacert /var/lib/vaultk8s/openbao/ca.pem \
             --state-dir /var/lib/vaultk8s/operator)"
eval "$exports"
if [ "${VAULTK8S_HSM:-}" = 1 ]; then
  # SOFTHSM2_CONF and the PIN (read from its 0600 file) for the roots' token in the `softhsm` volume.
  exports="$(vaultk8s hsm init-dev --state-dir /var/lib/vaultk8s/hsm)"
  eval "$exports"
fi
vaultk8s bootstrap --config "$CONFIG" --out /var/lib/vaultk8s/operator/out
vaultk8s policy apply --config "$CONFIG"
vaultk8s node credentials --config "$CONFIG" --node "$VAULTK8S_NODE" --out "$CREDS"
# The agent trusts OpenBao's listener through this public CA file; nothing secret is copied.
cp /var/lib/vaultk8s/openbao/ca.pem "$CREDS/vault-ca.pem"
echo "bootstrap done: credentials for $VAULTK8S_NODE in $CREDS"
