"""The CSR signer: a controller that signs kubelet CSRs with the nodes' own Vault roles (docs/signer.md)."""
