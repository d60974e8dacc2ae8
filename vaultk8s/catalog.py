"""The certificate catalog: the one table everything else is derived from.

Vault mounts and roles, issued files, kubeconfigs, RBAC manifests, policies, the expiry check and
the agent's renewal list all read these tuples. Adding a component is one entry here.
Facts follow kubeadm's certlist.go and kubeconfig phase (see shared/reference/k8s-pki.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Usage(str, Enum):
    SERVER = "server"
    CLIENT = "client"


class Placement(str, Enum):
    CONTROL_PLANE = "control-plane"
    ALL_NODES = "all-nodes"


class San(str, Enum):
    """Kinds of subject alternative names, resolved per node by plan.resolve."""

    NODE_NAME = "node-name"
    NODE_IPS = "node-ips"
    NODE_EXTRA_SANS = "node-extra-sans"
    LOCALHOST = "localhost"  # localhost, 127.0.0.1, ::1
    API_SERVICE = "api-service"  # kubernetes.default.svc.<domain>... and the first service IP
    ENDPOINT_HOST = "endpoint-host"


class Server(str, Enum):
    """Which API server address a kubeconfig names."""

    ENDPOINT = "endpoint"  # cluster.endpoint (controlPlaneEndpoint)
    LOCAL = "local"  # this node's own API server (kubeadm's localAPIEndpoint)


NODE = "{node}"  # placeholder in a common name, replaced by the node's name
# Every renewal window opens here: the agent's schedule, bootstrap's re-issue, the dev listener's.
RENEW_FRACTION = 2 / 3


@dataclass(frozen=True)
class CASpec:
    name: str  # also the Vault mount name under the cluster's mount prefix
    common_name: str
    cert_file: str  # relative to pki/
    description: str

    @property
    def key_file(self) -> str:
        """kubeadm's key beside the CA certificate (pki/ca.key for pki/ca.crt): never an output here."""
        return self.cert_file.removesuffix(".crt") + ".key"


@dataclass(frozen=True)
class CertSpec:
    name: str  # unique id; the Vault role name (suffixed with the node for per-node roles)
    ca: str
    file_base: str  # relative to pki/, without .crt/.key
    common_name: str  # may contain NODE
    organization: str | None
    usages: frozenset[Usage]
    sans: tuple[San, ...]
    placement: Placement
    description: str

    @property
    def per_node(self) -> bool:
        """A cert whose CN or SANs name the node gets a role per node, so one node cannot
        obtain another node's identity."""
        node_sans = {San.NODE_NAME, San.NODE_IPS, San.NODE_EXTRA_SANS}
        return NODE in self.common_name or bool(node_sans & set(self.sans))

    def role_for(self, node: str) -> str:
        """The Vault role that issues this certificate on node."""
        return f"{self.name}-{node}" if self.per_node else self.name

    @property
    def cert_file(self) -> str:
        return f"{self.file_base}.crt"

    @property
    def key_file(self) -> str:
        return f"{self.file_base}.key"


@dataclass(frozen=True)
class KubeconfigSpec:
    file: str  # relative to the node directory, as kubeadm names it
    cert: str  # CertSpec.name of the client identity
    server: Server
    embed_cert: bool  # admin configs travel; component configs reference files client-go reloads
    placement: Placement
    component: str | None = None  # the process reading it, restarted when the file is rewritten


@dataclass(frozen=True)
class ClusterRoleBindingSpec:
    name: str
    cluster_role: str
    subject_kind: str  # User or Group
    subject_name: str


CAS: tuple[CASpec, ...] = (
    CASpec("kubernetes-ca", "kubernetes", "ca.crt", "API server, kubelets, control-plane clients"),
    CASpec("etcd-ca", "etcd-ca", "etcd/ca.crt", "etcd server, peer and client certificates"),
    CASpec("front-proxy-ca", "front-proxy-ca", "front-proxy-ca.crt", "aggregation-layer client"),
)

_SERVER = frozenset({Usage.SERVER})
_CLIENT = frozenset({Usage.CLIENT})
_BOTH = frozenset({Usage.SERVER, Usage.CLIENT})
_CP = Placement.CONTROL_PLANE
_ALL = Placement.ALL_NODES
_ETCD_SANS = (San.NODE_NAME, San.LOCALHOST, San.NODE_IPS)

CERTS: tuple[CertSpec, ...] = (
    CertSpec("apiserver", "kubernetes-ca", "apiserver", "kube-apiserver", None, _SERVER,
             (San.NODE_NAME, San.API_SERVICE, San.NODE_IPS, San.ENDPOINT_HOST, San.NODE_EXTRA_SANS),
             _CP, "kube-apiserver serving certificate"),
    CertSpec("apiserver-kubelet-client", "kubernetes-ca", "apiserver-kubelet-client",
             "kube-apiserver-kubelet-client", None, _CLIENT, (), _CP,
             "API server to kubelet client; bound to system:kubelet-api-admin"),
    CertSpec("apiserver-etcd-client", "etcd-ca", "apiserver-etcd-client", "kube-apiserver-etcd-client",
             None, _CLIENT, (), _CP, "API server to etcd client"),
    CertSpec("front-proxy-client", "front-proxy-ca", "front-proxy-client", "front-proxy-client", None,
             _CLIENT, (), _CP, "aggregation-layer (front proxy) client"),
    CertSpec("etcd-server", "etcd-ca", "etcd/server", NODE, None, _BOTH, _ETCD_SANS, _CP,
             "etcd serving certificate"),
    CertSpec("etcd-peer", "etcd-ca", "etcd/peer", NODE, None, _BOTH, _ETCD_SANS, _CP,
             "etcd peer certificate"),
    CertSpec("etcd-healthcheck-client", "etcd-ca", "etcd/healthcheck-client",
             "kube-etcd-healthcheck-client", None, _CLIENT, (), _CP, "etcd liveness probe client"),
    CertSpec("controller-manager", "kubernetes-ca", "controller-manager", "system:kube-controller-manager",
             None, _CLIENT, (), _CP, "kube-controller-manager client"),
    CertSpec("scheduler", "kubernetes-ca", "scheduler", "system:kube-scheduler", None, _CLIENT, (), _CP,
             "kube-scheduler client"),
    CertSpec("admin", "kubernetes-ca", "admin", "kubernetes-admin", "kubeadm:cluster-admins", _CLIENT, (),
             _CP, "cluster administrator, bound to cluster-admin by a ClusterRoleBinding"),
    CertSpec("super-admin", "kubernetes-ca", "super-admin", "kubernetes-super-admin", "system:masters",
             _CLIENT, (), _CP, "break-glass administrator (system:masters bypasses RBAC)"),
    CertSpec("kubelet-client", "kubernetes-ca", "kubelet-client", f"system:node:{NODE}", "system:nodes",
             _CLIENT, (), _ALL, "kubelet client (Node authorizer identity)"),
    CertSpec("kubelet-serving", "kubernetes-ca", "kubelet", f"system:node:{NODE}", "system:nodes", _SERVER,
             (San.NODE_NAME, San.NODE_IPS, San.NODE_EXTRA_SANS), _ALL,
             "kubelet serving certificate, verified by the API server"),
    CertSpec("kube-proxy", "kubernetes-ca", "kube-proxy", "system:kube-proxy", None, _CLIENT, (), _ALL,
             "kube-proxy client; bound to system:node-proxier by default RBAC"),
)

# The certificate a node's agent logs in to Vault with once enrolled (Vault's cert auth, docs/identity.md):
# every node has one (control plane too, placement _ALL), its CN system:node:<node> names exactly one
# node, and it chains to kubernetes-ca, the trust of the node's cert-auth entry.
LOGIN_CERT = "kubelet-client"
LOGIN_CA = "kubernetes-ca"

KUBECONFIGS: tuple[KubeconfigSpec, ...] = (
    KubeconfigSpec("admin.conf", "admin", Server.ENDPOINT, True, _CP),
    KubeconfigSpec("super-admin.conf", "super-admin", Server.ENDPOINT, True, _CP),
    KubeconfigSpec("controller-manager.conf", "controller-manager", Server.LOCAL, False, _CP, "kube-controller-manager"),
    KubeconfigSpec("scheduler.conf", "scheduler", Server.LOCAL, False, _CP, "kube-scheduler"),
    KubeconfigSpec("kubelet.conf", "kubelet-client", Server.ENDPOINT, False, _ALL, "kubelet"),
    KubeconfigSpec("kube-proxy.conf", "kube-proxy", Server.ENDPOINT, False, _ALL, "kube-proxy"),
)

CLUSTER_ROLE_BINDINGS: tuple[ClusterRoleBindingSpec, ...] = (
    ClusterRoleBindingSpec("kubeadm:apiserver-kubelet-client", "system:kubelet-api-admin", "User",
                           "kube-apiserver-kubelet-client"),
    ClusterRoleBindingSpec("kubeadm:cluster-admins", "cluster-admin", "Group", "kubeadm:cluster-admins"),
)

# kubeadm's external-CA mode: these must never exist in the output.
CA_KEY_FILES = frozenset(ca.key_file for ca in CAS)

SA_KEY_FILE = "sa.key"
SA_PUB_FILE = "sa.pub"

# The output tree: `<out>/<node>/` mirrors that node's /etc/kubernetes, its certificates and keys
# in PKI_DIR; RBAC_FILE (the CLUSTER_ROLE_BINDINGS as manifests) sits at `<out>/`.
PKI_DIR = "pki"
RBAC_FILE = "rbac.yaml"


def ca(name: str) -> CASpec:
    return _named(CAS, name)


def cert(name: str) -> CertSpec:
    return _named(CERTS, name)


def _named(specs, name: str):
    """The spec called name (KeyError when none is): the tables are small, a scan is enough."""
    for spec in specs:
        if spec.name == name:
            return spec
    raise KeyError(name)
    raise KeyError(name)


def role_collisions(nodes: list[tuple[str, bool]]) -> list[str]:
    """Node names whose per-node role would equal another role (e.g. a control-plane node named
    `kubelet-client` makes `apiserver-kubelet-client`): two identities would share one role."""
    owners = {spec.name: "a shared role" for spec in CERTS if not spec.per_node}
    problems = []
    for node, control_plane in nodes:
        for spec in (s for s in certs_for(control_plane) if s.per_node):
            role = spec.role_for(node)
            if role in owners:
                problems.append(f"node name {node!r} makes role {role!r} collide with {owners[role]}; rename the node")
            owners[role] = f"the {spec.name} role of {node}"
    return problems


MAX_COMMON_NAME = 64  # RFC 5280 ub-common-name


def common_name_overflows(node: str, control_plane: bool) -> list[str]:
    """A node name that makes one of its certificates' CN longer than X.509 allows."""
    for spec in certs_for(control_plane):
        cn = spec.common_name.replace(NODE, node)
        if len(cn) > MAX_COMMON_NAME:
            limit = MAX_COMMON_NAME - (len(spec.common_name) - len(NODE))
            return [f"node name {node[:70]!r} is {len(node)} characters; CN {spec.common_name.replace(NODE, '<node>')!r} "
                    f"allows at most {limit} (X.509 limits a CN to {MAX_COMMON_NAME})"]
    return []


def certs_for(control_plane: bool) -> tuple[CertSpec, ...]:
    return tuple(c for c in CERTS if control_plane or c.placement is Placement.ALL_NODES)


def kubeconfigs_for(control_plane: bool) -> tuple[KubeconfigSpec, ...]:
    return tuple(k for k in KUBECONFIGS if control_plane or k.placement is Placement.ALL_NODES)


def components_reading(files: list[str]) -> list[str]:
    """The processes to restart after these kubeconfigs were rewritten (they read them only at start)."""
    return [k.component for k in KUBECONFIGS if k.component and k.file in files]


def cas_for(control_plane: bool) -> tuple[CASpec, ...]:
    """CA bundles a node needs: every CA whose certificates it holds."""
    needed = {c.ca for c in certs_for(control_plane)}
    return tuple(c for c in CAS if c.name in needed)


@dataclass(frozen=True)
class IdentitySpec:
    """Who may obtain which certificates: one Vault policy per identity kind (policies/<name>.hcl).

    `attach` says which nodes' machine credentials (AppRole role, token role) carry the policy;
    None means no node does and a human (admin kubeconfigs) or a service (the CSR signer) gets it.
    `every_node`: per-node certs are granted for every node of the cluster file instead of the
    caller's own: a signer acting for the nodes, never the certificates' holder.
    """

    name: str
    certs: tuple[str, ...]  # CertSpec names; per-node certs resolve to the caller's own node
    attach: Placement | None
    description: str
    every_node: bool = False


IDENTITIES: tuple[IdentitySpec, ...] = (
    IdentitySpec("control-plane-apiserver",
                 ("apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client"),
                 _CP, "kube-apiserver's serving and client certificates on a control-plane node"),
    IdentitySpec("control-plane-etcd", ("etcd-server", "etcd-peer", "etcd-healthcheck-client"), _CP,
                 "etcd's serving, peer and health-check certificates on a control-plane node"),
    IdentitySpec("control-plane-controllers", ("controller-manager", "scheduler"), _CP,
                 "kube-controller-manager and kube-scheduler client certificates"),
    IdentitySpec("node", ("kubelet-client", "kubelet-serving", "kube-proxy"), _ALL,
                 "a node's kubelet client and serving certificates and kube-proxy"),
    IdentitySpec("cluster-admin", ("admin",), None,
                 "admin.conf (kubeadm:cluster-admins, bound to cluster-admin by RBAC): for people, not nodes"),
    IdentitySpec("break-glass", ("super-admin",), None,
                 "super-admin.conf (system:masters bypasses RBAC): for emergencies only"),
    IdentitySpec("csr-signer", ("kubelet-client", "kubelet-serving"), None,
                 "`vaultk8s signer`: signs approved kubelet CSRs with each node's own kubelet roles, nothing else",
                 every_node=True),
)


def identity_of(cert_name: str) -> IdentitySpec:
    """The identity that holds a certificate (signers acting for every node are not holders)."""
    for spec in IDENTITIES:
        if cert_name in spec.certs and not spec.every_node:
            return spec
    raise KeyError(cert_name)
