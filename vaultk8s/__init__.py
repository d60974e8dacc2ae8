"""vaultk8s: Vault/OpenBao as the certificate authority of a Kubernetes control plane."""

__version__ = "0.1.0"
