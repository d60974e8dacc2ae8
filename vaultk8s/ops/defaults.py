"""Defaults the CLI shows in --help, kept apart from the operations so start-up does not load them."""

# Concurrent Vault requests in bootstrap. Measured knee (bench/README.md): a bare client against a
# local OpenBao signs fastest at 32 in flight (16: -12%, 64: -20%); role writes and reads flatten there.
DEFAULT_WORKERS = 32

# CSRs of one list the signer handles at once: each costs a read, a sign and a status write, mostly
# waiting on the API server and Vault (bench/README.md, CSR signer backlog).
DEFAULT_SIGNER_WORKERS = 8
