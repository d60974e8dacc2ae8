"""`vaultk8s adopt`: what a kubeadm tree holds, whether it is consistent and matches the cluster
file, and what adopting it into Vault takes (docs/adopt.md).

Pure: the tree comes in as bytes by path relative to the kubeadm directory (`pki/ca.crt`,
`admin.conf`), and what Vault holds as observed values. Every check runs before anything is
written; each problem is one line naming the file. Key material is held only in fields that are
kept out of reprs, and never goes into a message.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vaultk8s import catalog, crypto
from vaultk8s.config import ClusterConfig, NodeSpec
from vaultk8s.errors import PlanRefused
from vaultk8s.plan import sa
from vaultk8s.plan.actions import Action
from vaultk8s.plan.resolve import API_SERVICE_NAMES, SERVICE_FQDN_PREFIX, resolve_sans

PKI = f"{catalog.PKI_DIR}/"
SA_KEY = PKI + catalog.SA_KEY_FILE
SA_PUB = PKI + catalog.SA_PUB_FILE
NODE_SOURCE = PKI + catalog.cert("etcd-server").cert_file  # kubeadm names etcd's serving certificate after the node
APISERVER = PKI + catalog.cert("apiserver").cert_file
ADMIN_CONF = "admin.conf"


@dataclass(frozen=True)
class TreeCA:
    name: str  # the catalog CA (and mount) name
    cert: x509.Certificate
    key_pem: bytes | None = field(repr=False)  # goes to Vault only, in the import bundle; None once removed

    @property
    def bundle_pem(self) -> str:
        """Certificate then key, as `<mount>/issuers/import/bundle` takes them. Secret."""
        return (crypto.cert_pem(self.cert) + self.key_pem).decode()

    @property
    def fingerprint(self) -> str:
        return crypto.fingerprint(self.cert)


@dataclass(frozen=True)
class KubeadmTree:
    """A consistent kubeadm directory: its three CAs, its SA key and what it says about the cluster."""

    cas: dict[str, TreeCA]
    sa_key: crypto.PrivateKey = field(repr=False)
    node: str
    apiserver: x509.Certificate
    admin_server: str | None  # admin.conf's server: the cluster endpoint


# --- the tree on its own ------------------------------------------------------------------------

def read_tree(files: Mapping[str, bytes]) -> tuple[KubeadmTree | None, list[str]]:
    """The tree, or None and every problem found: a CA key that does not match its certificate,
    a leaf or kubeconfig client certificate from another CA, a missing or mismatched sa.key/sa.pub."""
    problems: list[str] = []
    cas = {ca.name: c for ca in catalog.CAS if (c := _read_ca(files, ca, problems)) is not None}
    for spec in catalog.CERTS:
        _check_leaf(files, PKI + spec.cert_file, PKI + spec.key_file, cas.get(spec.ca), problems)
    kubernetes_ca = cas.get("kubernetes-ca")
    for spec in catalog.KUBECONFIGS:
        if spec.file in files:
            _check_kubeconfig(spec.file, files[spec.file], kubernetes_ca, problems)
    sa_key = _read_sa_key(files, problems)
    node = _node_name(files, problems)
    apiserver = _load_cert(files, APISERVER, problems, required=True)
    if problems:
        return None, problems
    return KubeadmTree(cas, sa_key, node, apiserver, _kubeconfig_server(files.get(ADMIN_CONF))), []


def _read_ca(files: Mapping[str, bytes], ca: catalog.CASpec, problems: list[str]) -> TreeCA | None:
    """A CA certificate and its key; the key may be gone (--remove-ca-keys ran): plan_cas then
    needs Vault to hold it already."""
    cert_path, key_path = PKI + ca.cert_file, PKI + ca.key_file
    cert = _load_cert(files, cert_path, problems, required=True)
    key = _load_key(files, key_path, problems) if key_path in files else None
    if cert is None or (key is None and key_path in files):
        return None
    if not crypto.is_self_signed(cert):
        problems.append(f"{cert_path} is not a self-signed root CA: vaultk8s adopts kubeadm's own roots only")
        return None
    if key is not None and not crypto.key_matches(cert, key):
        problems.append(f"{key_path} does not match {cert_path}")
        return None
    return TreeCA(ca.name, cert, crypto.key_pem(key) if key is not None else None)


def _check_leaf(files: Mapping[str, bytes], cert_path: str, key_path: str, ca: TreeCA | None,
                problems: list[str]) -> None:
    """A leaf kubeadm made (absent ones are fine: bootstrap issues them) chains to its CA and has its key."""
    if cert_path not in files:
        return
    cert = _load_cert(files, cert_path, problems)
    if cert is None or ca is None:
        return
    if not crypto.signed_by(cert, ca.cert):
        problems.append(f"{cert_path} is not signed by {PKI}{catalog.ca(ca.name).cert_file}")
    key = _load_key(files, key_path, problems) if key_path in files else None
    if key is not None and not crypto.key_matches(cert, key):
        problems.append(f"{key_path} does not match {cert_path}")


def _check_kubeconfig(name: str, data: bytes, ca: TreeCA | None, problems: list[str]) -> None:
    entries = _first_entries(data)
    if entries is None:
        problems.append(f"{name} is not a kubeconfig with a cluster and a user")
        return
    cluster, user, _ = entries
    if ca is None:
        return
    trusted = _embedded_certs(cluster.get("certificate-authority-data"))
    if trusted is not None and ca.fingerprint not in {crypto.fingerprint(c) for c in trusted}:
        problems.append(f"{name} trusts a CA other than {PKI}ca.crt")
    client = _embedded_certs(user.get("client-certificate-data"))
    if client and not crypto.signed_by(client[0], ca.cert):
        problems.append(f"{name}'s client certificate is not signed by {PKI}ca.crt")


def _embedded_certs(data: Any) -> list[x509.Certificate] | None:
    if not isinstance(data, str):
        return None
    try:
        return crypto.load_certs(base64.b64decode(data))
    except (ValueError, binascii.Error):
        return []


def _read_sa_key(files: Mapping[str, bytes], problems: list[str]) -> crypto.PrivateKey | None:
    key = _load_key(files, SA_KEY, problems)
    if SA_PUB not in files:
        problems.append(f"{SA_PUB} missing")
        return key
    try:
        public = serialization.load_pem_public_key(files[SA_PUB])
    except ValueError:
        problems.append(f"{SA_PUB} is not a PEM public key")
        return key
    if key is not None and key.public_key() != public:
        problems.append(f"{SA_PUB} does not match {SA_KEY}")
    return key


def _node_name(files: Mapping[str, bytes], problems: list[str]) -> str:
    cert = _load_cert(files, NODE_SOURCE, problems, required=True)
    return crypto.facts(cert).common_name if cert is not None else ""


def _load_cert(files: Mapping[str, bytes], path: str, problems: list[str], required: bool = False):
    return _load(files, path, problems, lambda data: crypto.load_certs(data)[0], (ValueError, IndexError),
                 "a PEM certificate", required)


def _load_key(files: Mapping[str, bytes], path: str, problems: list[str]) -> crypto.PrivateKey | None:
    # the problem never quotes the key's text: it is secret
    return _load(files, path, problems, crypto.load_key, (ValueError, TypeError),
                 "an unencrypted PEM private key", required=True)


def _load(files: Mapping[str, bytes], path: str, problems: list[str], load, errors: tuple, what: str,
          required: bool):
    """load(files[path]), or None with the problem named (a missing file is one only when required)."""
    if path not in files:
        if required:
            problems.append(f"{path} missing")
        return None
    try:
        return load(files[path])
    except errors:
        problems.append(f"{path} is not {what}")
        return None


def _first_entries(data: bytes | None) -> tuple[dict, dict, str] | None:
    """A kubeconfig's first cluster, first user and cluster name; None when it is not one."""
    if data is None:
        return None
    try:
        doc = yaml.safe_load(data)
        cluster, user = doc["clusters"][0], doc["users"][0]["user"]
        return dict(cluster["cluster"]), dict(user), str(cluster.get("name") or "")
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None


def _kubeconfig_server(data: bytes | None) -> str | None:
    entries = _first_entries(data)
    return str(entries[0].get("server")) if entries and entries[0].get("server") else None


# --- the tree against the cluster file -----------------------------------------------------------

def check_cluster(config: ClusterConfig, tree: KubeadmTree) -> list[str]:
    """Where the cluster file disagrees with the tree: the node, the endpoint, the API server's names."""
    problems: list[str] = []
    node = next((n for n in config.control_plane if n.name == tree.node), None)
    if node is None:
        return [f"node {tree.node!r} ({NODE_SOURCE}'s CN) is not a control-plane node in the cluster file"]
    if tree.admin_server is not None and tree.admin_server.rstrip("/") != config.endpoint.rstrip("/"):
        problems.append(f"cluster.endpoint {config.endpoint} differs from {ADMIN_CONF}'s server {tree.admin_server}")
    problems.extend(_apiserver_name_problems(config, node, tree.apiserver))
    return problems


def _apiserver_name_problems(config: ClusterConfig, node: NodeSpec, cert: x509.Certificate) -> list[str]:
    spec = catalog.cert("apiserver")
    dns, ips = resolve_sans(spec, node, config)
    have = crypto.facts(cert)
    problems = []
    service_ip = config.first_service_ip
    if service_ip not in have.ip_sans:
        problems.append(f"cluster.service_cidr's first IP {service_ip} is not in {APISERVER}'s SANs")
    missing = sorted(have.dns_sans - set(dns)) + sorted(str(i) for i in have.ip_sans - set(ips))
    if missing:
        problems.append(f"{APISERVER} names {', '.join(missing)}, which the cluster file does not give node "
                        f"{node.name} (ips, sans, cluster.endpoint, domain): clients using them would break")
    extra = sorted(set(dns) - have.dns_sans) + sorted(str(i) for i in set(ips) - have.ip_sans if i != service_ip)
    if extra:
        problems.append(f"the cluster file gives node {node.name}'s API server {', '.join(extra)}, "
                        f"which {APISERVER} does not name")
    return problems


# --- what Vault needs ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ObservedMount:
    mount_type: str | None
    ca_pem: str | None = None  # the default issuer's certificate
    has_key: bool = False  # the default issuer has its private key in Vault
    issuer_name: str = ""


def plan_cas(config: ClusterConfig, tree: KubeadmTree, observed: Mapping[str, ObservedMount]) -> list[Action]:
    """enable-mount and import-ca per CA; refuses a mount that holds another CA (all checked first)."""
    actions = []
    for ca in catalog.CAS:
        mount, seen, have = config.mount(ca.name), observed[ca.name], tree.cas[ca.name]
        if seen.mount_type not in (None, "pki"):
            raise PlanRefused(f"Vault path {mount}/ is already a {seen.mount_type!r} engine, not PKI: "
                              "choose another vault.mount_prefix")
        if seen.ca_pem is not None:
            found = crypto.fingerprint(crypto.load_cert(seen.ca_pem))
            if found != have.fingerprint:
                raise PlanRefused(
                    f"{mount} already holds another CA (sha256 {found[:16]}...), not {PKI}{ca.cert_file} "
                    f"(sha256 {have.fingerprint[:16]}...): this directory belongs to another cluster, "
                    "or choose another vault.mount_prefix")
            if not seen.has_key:
                raise PlanRefused(f"{mount} holds {PKI}{ca.cert_file} without its key: import its bundle "
                                  "by hand or use another vault.mount_prefix")
            if not seen.issuer_name:  # an adopt stopped between the import and the naming
                actions.append(Action("import-ca", mount, f"{PKI}{ca.cert_file} is there unnamed: name it"))
            continue
        if have.key_pem is None:
            raise PlanRefused(f"{PKI}{ca.key_file} missing, and {mount} does not hold {PKI}{ca.cert_file}: "
                              "nothing to import the CA from (restore the key from the backup)")
        if seen.mount_type is None:
            actions.append(Action("enable-mount", mount, "PKI mount missing"))
        actions.append(Action("import-ca", mount, f"kubeadm's {PKI}{ca.cert_file} and its key "
                                                  f"(sha256 {have.fingerprint[:16]}...) become the issuer"))
    return actions


def plan_sa_key(config: ClusterConfig, tree: KubeadmTree, stored: sa.KeySet | None) -> list[Action]:
    """import-sa-key when the key set does not exist; nothing when it already holds sa.key; refused
    when it holds other keys (a re-adoption would otherwise drop the keys every token relies on)."""
    kid = sa.jwt_kid(tree.sa_key.public_key())
    target = f"{config.service_account.kv_mount}/data/{config.service_account.kv_path}"
    if stored is None:
        return [Action("import-sa-key", target, f"kubeadm's {SA_KEY} (kid {kid}) becomes the active key")]
    if any(k.id == kid for k in stored.keys):
        return []
    raise PlanRefused(f"{target} already holds other service-account keys (active kid {stored.active.id}), "
                      f"not {SA_KEY} (kid {kid}): this directory belongs to another cluster, or choose "
                      "another service_account.kv_path")


def ca_keys_in_vault(tree: KubeadmTree, observed: Mapping[str, ObservedMount]) -> list[str]:
    """The CAs whose key Vault does not hold yet (for --remove-ca-keys: all must be held)."""
    missing = []
    for name, ca in tree.cas.items():
        seen = observed[name]
        same = seen.ca_pem is not None and crypto.fingerprint(crypto.load_cert(seen.ca_pem)) == ca.fingerprint
        if not (same and seen.has_key):
            missing.append(name)
    return missing


# --- a cluster file from the tree (--print-config) ---------------------------------------------------

UNDERIVED = "UNDERIVED"  # the mark on a field the tree cannot tell: check or fill it in
# A 1.24 kubelet makes a P-256 key for every CSR, whatever the cluster's other keys are (seen with
# the real kubelet: the signer refused each CSR of an adopted RSA-2048 cluster as UnsupportedKeyType).
KUBELET_KEY_TYPE = "ec-p256"


def derive_config(tree: KubeadmTree, files: Mapping[str, bytes]) -> tuple[dict[str, Any], dict[str, str]]:
    """A cluster file describing this tree, and its underivable fields ("section.key": why) marked."""
    server = tree.admin_server or ""
    endpoint_host = server.removeprefix("https://").rsplit(":", 1)[0].strip("[]")
    have = crypto.facts(tree.apiserver)
    etcd_ips = crypto.facts(crypto.load_certs(files[NODE_SOURCE])[0]).ip_sans
    node_ips = sorted((str(i) for i in etcd_ips if not i.is_loopback), key=str)
    domains = sorted(d.removeprefix(SERVICE_FQDN_PREFIX) for d in have.dns_sans if d.startswith(SERVICE_FQDN_PREFIX))
    service_ip = _service_ip(have.ip_sans, set(node_ips) | {endpoint_host})
    taken = {tree.node, *API_SERVICE_NAMES, *(f"{SERVICE_FQDN_PREFIX}{d}" for d in domains), endpoint_host, *node_ips,
             str(service_ip)}
    sans = sorted(n for n in [*have.dns_sans, *(str(i) for i in have.ip_sans)] if n not in taken)
    local = _kubeconfig_server(files.get("controller-manager.conf")) or ""
    doc = {
        "cluster": {"name": _cluster_name(files.get(ADMIN_CONF)), "endpoint": server,
                    "service_cidr": _service_cidr(service_ip), "domain": domains[0] if domains else "cluster.local",
                    "apiserver_port": int(local.rsplit(":", 1)[1]) if local.count(":") >= 2 else 6443},
        "pki": {"key_type": KUBELET_KEY_TYPE, "leaf_ttl": "24h", "ca_ttl": "87600h"},
        "vault": {"mount_prefix": ""},
        "nodes": {"control_plane": [{"name": tree.node, "ips": node_ips, "sans": sans}], "workers": []},
    }
    marked = {
        "cluster.service_cidr": f"only its first IP ({service_ip}) is in apiserver.crt: set kubeadm's serviceSubnet",
        "vault.mount_prefix": "where this cluster's mounts go in Vault",
        "nodes.control_plane": "only this node is in this directory: add the other control-plane nodes",
        "nodes.workers": "joined nodes are not in this directory: add them",
    }
    if have.key_type != KUBELET_KEY_TYPE:
        marked["pki.key_type"] = (f"kubeadm's leaves are {have.key_type}; the kubelets' CSRs are always "
                                  f"{KUBELET_KEY_TYPE}, and vaultk8s signer signs only this key type")
    return doc, marked


def _service_ip(ips, not_service: set[str]):
    """The API service IP: the apiserver SAN IP that is neither a node IP nor the endpoint host."""
    rest = sorted((i for i in ips if str(i) not in not_service and not i.is_loopback), key=str)
    return rest[0] if rest else None


def _service_cidr(service_ip) -> str:
    """kubeadm's default /12 when the first IP fits it, else the smallest guess (marked either way)."""
    if service_ip is None:
        return ""
    network = int(service_ip) - 1
    for prefix in ((12, 16, 24) if service_ip.version == 4 else (108, 112, 120)):
        bits = service_ip.max_prefixlen - prefix
        if network % (1 << bits) == 0:
            return f"{service_ip - 1}/{prefix}"
    return f"{service_ip - 1}/{service_ip.max_prefixlen - 1}"


def _cluster_name(admin_conf: bytes | None) -> str:
    entries = _first_entries(admin_conf)
    return entries[2] if entries and entries[2] else "kubernetes"  # kubeadm's default clusterName


def render_derived(doc: dict[str, Any], marked: Mapping[str, str]) -> str:
    """The cluster file as YAML, each underivable field followed by a `# UNDERIVED: why` line."""
    lines = ["# Derived by `vaultk8s adopt --print-config` from a kubeadm directory.",
             f"# Fields marked {UNDERIVED} are not in the directory: check or fill them in.", ""]
    for section, values in doc.items():
        lines.append(f"{section}:")
        for key, value in values.items():
            lines.extend(_yaml_entry(key, value))
            why = marked.get(f"{section}.{key}")
            if why:
                lines.append(f"  # {UNDERIVED}: {why}")
    return "\n".join(lines) + "\n"


def _yaml_entry(key: str, value: Any) -> list[str]:
    """Scalars as `key: value`, lists in block style with their inner lists inline."""
    if isinstance(value, (list, dict)) and value:
        text = yaml.safe_dump({key: value}, default_flow_style=None, sort_keys=False, width=200)
    else:
        text = yaml.safe_dump({key: value}, default_flow_style=False, sort_keys=False, width=200)
    return ["  " + line for line in text.rstrip("\n").splitlines()]
