"""The cluster file: its whole schema, parsed and validated once, before anything touches Vault or disk.

Every section becomes a typed, frozen field of ClusterConfig; nothing else reads the file. Every
problem found is collected, so an operator fixes the file in one pass.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from vaultk8s.durations import parse_duration
from vaultk8s.errors import ConfigError, shown
from vaultk8s.hostnames import is_dns_label, is_dns_subdomain, is_ip, url_port
from vaultk8s.keytypes import LEAF_KEY_TYPES, ROOT_KEY_TYPES, SA_KEY_TYPES

if TYPE_CHECKING:
    import yaml

    from vaultk8s.hsm.settings import HsmSettings

DEFAULT_APISERVER_PORT = 6443

TOP_LEVEL_KEYS = {"cluster", "pki", "vault", "nodes", "hsm", "service_account", "policy", "kubeconfigs", "signer"}
_POLICY_KEYS = {"max_leaf_ttl", "token_ttl", "token_max_ttl", "token_num_uses", "secret_id_ttl",
                "secret_id_num_uses", "bind_cidrs"}
_SA_KEYS = {"key_type", "kv_mount", "grace_period", "issuer", "max_age"}
_SIGNER_KEYS = {"namespace", "service_account"}
_HSM_KEYS = ("module", "token_label", "token_serial", "pin_env", "pin_file", "key_type")

DEFAULT_SA_KEY_TYPE = "rsa-2048"
DEFAULT_SA_GRACE = timedelta(hours=48)
# Projected tokens live 1h by default; a shorter grace would break pods that have not refreshed yet.
MIN_SA_GRACE = timedelta(hours=1)
DEFAULT_SA_MAX_AGE = timedelta(days=365)  # `vaultk8s status`: the active key is due for rotation after this
DEFAULT_SIGNER_NAMESPACE = "kube-system"  # as deploy/signer/signer.yaml
DEFAULT_SIGNER_SERVICE_ACCOUNT = "vaultk8s-signer"
SA_KV_SUFFIX = "vaultk8s"

_MOUNT_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RESERVED_MOUNTS = ("sys", "auth", "identity", "cubbyhole")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ips: tuple[IPAddress, ...]
    sans: tuple[str, ...] = ()
    control_plane: bool = False


@dataclass(frozen=True)
class PolicySettings:
    """The `policy:` section: bounds on machine credentials and on leaves."""

    max_leaf_ttl: timedelta
    token_ttl: timedelta
    token_max_ttl: timedelta
    token_num_uses: int
    secret_id_ttl: timedelta
    secret_id_num_uses: int
    bind_cidrs: bool


@dataclass(frozen=True)
class SASettings:
    """The `service_account:` section: where the key set lives in Vault KV, and its rotation bounds."""

    key_type: str
    kv_mount: str
    kv_path: str
    grace_period: timedelta
    # kube-apiserver's --service-account-issuer: the `iss` of the tokens Vault's JWT login accepts
    issuer: str = "https://kubernetes.default.svc.cluster.local"
    max_age: timedelta = DEFAULT_SA_MAX_AGE


@dataclass(frozen=True)
class SignerIdentity:
    """The `signer:` section: the ServiceAccount the CSR signer runs as (its JWT login's subject)."""

    namespace: str = DEFAULT_SIGNER_NAMESPACE
    service_account: str = DEFAULT_SIGNER_SERVICE_ACCOUNT

    @property
    def subject(self) -> str:
        """The `sub` claim kube-apiserver puts in this ServiceAccount's tokens."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    endpoint: str
    endpoint_host: str
    service_cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    domain: str
    key_type: str
    leaf_ttl: timedelta
    ca_ttl: timedelta
    mount_prefix: str
    control_plane: tuple[NodeSpec, ...]
    workers: tuple[NodeSpec, ...]
    policy: PolicySettings
    service_account: SASettings
    apiserver_port: int = DEFAULT_APISERVER_PORT
    hsm: HsmSettings | None = None  # set: root keys live in a PKCS#11 token, Vault holds intermediates
    embed_client_certs: bool = False  # kubeadm-shaped: every kubeconfig embeds its client cert and key
    signer: SignerIdentity = SignerIdentity()

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return self.control_plane + self.workers

    @property
    def first_service_ip(self) -> IPAddress:
        return self.service_cidr.network_address + 1

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"no node named {shown(name)} in the cluster file")

    @property
    def hsm_scope(self) -> str:
        """Names this cluster's root objects in a shared HSM token (cluster name and mount prefix)."""
        return f"{self.name}/{self.mount_prefix}"

    def mount(self, ca_name: str) -> str:
        """The Vault mount path of a CA: the prefix lets several clusters share one Vault."""
        return f"{self.mount_prefix}{ca_name}"


MAX_CONFIG_BYTES = 32 * 1024 * 1024  # a 10,000-node cluster file is about 1 MB


MAX_DEPTH = 64  # a cluster file is 5 levels deep


@functools.cache  # PyYAML loads with the first cluster file, not with `vaultk8s --help`
def _strict_loader() -> type:
    import yaml

    class StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml: 10x faster on big files
        """safe_load, minus what hides mistakes: a duplicate key would silently keep the last value."""

        def construct_mapping(self, node, deep=False):  # type: ignore[override]
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) or key is None:
                    if key in seen:
                        raise ConfigError(f"duplicate key {shown(key)} at line {key_node.start_mark.line + 1}")
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _refuse_aliases_and_depth(root: yaml.Node) -> None:
    """An alias (*name) makes the composer reuse a node: refuse any node met twice (no alias bombs),
    and nesting deeper than any cluster file needs. Iterative, so no input can exhaust the stack."""
    import yaml

    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if id(node) in seen:
            raise ConfigError(f"YAML aliases (*name) are not allowed (anchor at line {node.start_mark.line + 1})")
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested deeper than {MAX_DEPTH} levels at line {node.start_mark.line + 1}: "
                              "nested too deeply to be a cluster file")
        if isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)


def load_config(path: Path) -> ClusterConfig:
    source = str(path)
    try:
        with Path(path).open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except IsADirectoryError:
        raise ConfigError("is a directory, not a cluster file", source=source) from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", source=source) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; is it a cluster file?", source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not a UTF-8 text file (byte {err.start}); is it a cluster file?", source) from None
    if "\x00" in text:
        raise ConfigError("holds NUL bytes: not a YAML text file", source)
    return parse_config(parse_yaml(text, source), source=source)


def parse_yaml(text: str, source: str) -> Any:
    import yaml

    loader = _strict_loader()(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _refuse_aliases_and_depth(root)
        return loader.construct_document(root)
    except ConfigError as err:
        raise ConfigError(err.problems, source) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ConfigError(f"not valid YAML{where}: {problem}", source=source) from None
    except RecursionError:
        raise ConfigError("nested too deeply to be a cluster file", source=source) from None
    finally:
        loader.dispose()


def parse_config(data: Any, source: str = "cluster file") -> ClusterConfig:
    problems: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError("must be a YAML mapping with cluster, pki, vault and nodes", source)
    for key in sorted(set(data) - TOP_LEVEL_KEYS, key=str):
        problems.append(f"unknown top-level key {shown(key)} (known: {', '.join(sorted(TOP_LEVEL_KEYS))})")
    cluster = _section(data, "cluster", problems, required=True)
    pki = _section(data, "pki", problems)
    vault = _section(data, "vault", problems)
    nodes = _section(data, "nodes", problems, required=True)
    kubeconfigs = _section(data, "kubeconfigs", problems)

    _unknown_keys(cluster, "cluster", {"name", "endpoint", "service_cidr", "domain", "apiserver_port"}, problems)
    _unknown_keys(pki, "pki", {"key_type", "leaf_ttl", "ca_ttl"}, problems)
    _unknown_keys(vault, "vault", {"mount_prefix"}, problems)
    _unknown_keys(nodes, "nodes", {"control_plane", "workers"}, problems)
    _unknown_keys(kubeconfigs, "kubeconfigs", {"embed_client_certs"}, problems)

    name = _cluster_name(cluster.get("name"), problems)
    endpoint, endpoint_host = _endpoint(cluster.get("endpoint"), problems)
    service_cidr = _service_cidr(cluster.get("service_cidr", "10.96.0.0/12"), problems)
    domain = _domain(cluster.get("domain", "cluster.local"), problems)
    apiserver_port = _port(cluster.get("apiserver_port", DEFAULT_APISERVER_PORT), problems)
    key_type = pki.get("key_type", "ec-p256")
    if key_type not in LEAF_KEY_TYPES:
        problems.append(f"pki.key_type {shown(key_type)} is not one of {', '.join(LEAF_KEY_TYPES)}")
    leaf_ttl = _ttl(pki.get("leaf_ttl", "24h"), "pki.leaf_ttl", problems)
    ca_ttl = _ttl(pki.get("ca_ttl", "87600h"), "pki.ca_ttl", problems)
    if leaf_ttl and ca_ttl and leaf_ttl >= ca_ttl:
        problems.append("pki.leaf_ttl must be shorter than pki.ca_ttl")
    if leaf_ttl and leaf_ttl < timedelta(minutes=10):
        problems.append("pki.leaf_ttl must be at least 10m, or certificates expire before they are renewed")
    mount_prefix = _mount_prefix(vault.get("mount_prefix", ""), problems)
    control_plane = _nodes(nodes.get("control_plane"), "nodes.control_plane", True, problems)
    workers = _nodes(nodes.get("workers", []), "nodes.workers", False, problems)
    if not control_plane and "control_plane" in nodes and not problems:
        problems.append("nodes.control_plane needs at least one node")
    _check_unique(control_plane + workers, problems)
    problems.extend(_role_collisions(control_plane + workers))
    hsm = _hsm(data.get("hsm"), problems)
    embed = kubeconfigs.get("embed_client_certs", False)
    if not isinstance(embed, bool):
        problems.append(f"kubeconfigs.embed_client_certs must be true or false, not {shown(embed)}")

    problems.extend(_name_length_problems(control_plane + workers))
    service_account = _service_account(_section(data, "service_account", problems, blank_is_absent=True),
                                       name, mount_prefix, domain, problems)
    signer = _signer(_section(data, "signer", problems, blank_is_absent=True), problems)
    policy = _policy(_section(data, "policy", problems, blank_is_absent=True), leaf_ttl, problems)
    if problems:
        raise ConfigError(problems, source)
    return ClusterConfig(
        name=name, endpoint=endpoint, endpoint_host=endpoint_host, service_cidr=service_cidr,
        domain=domain, key_type=key_type, leaf_ttl=leaf_ttl, ca_ttl=ca_ttl,
        mount_prefix=mount_prefix, control_plane=control_plane, workers=workers, policy=policy,
        service_account=service_account, apiserver_port=apiserver_port, hsm=hsm, embed_client_certs=embed is True,
        signer=signer,
    )


def _section(data: dict, key: str, problems: list[str], required: bool = False,
             blank_is_absent: bool = False) -> dict:
    """blank_is_absent: any empty value ([], "", false) counts as no section, so all defaults."""
    value = data.get(key)
    if value is None or (blank_is_absent and not value):
        if required:
            problems.append(f"missing section {shown(key)}")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key} must be a mapping")
        return {}
    return value


def _unknown_keys(section: dict, where: str, known: set[str], problems: list[str]) -> None:
    for key in sorted(set(section) - known, key=str):
        problems.append(f"unknown key {where}.{key} (known: {', '.join(sorted(known))})")


def _cluster_name(value: Any, problems: list[str]) -> str:
    return _dns_name(value, is_dns_label, problems,
                     f"cluster.name {shown(value)} must be a DNS-1123 label (lower-case letters, digits, '-')")


def _domain(value: Any, problems: list[str]) -> str:
    return _dns_name(value, is_dns_subdomain, problems, f"cluster.domain {shown(value)} must be a DNS name such as cluster.local")


def _dns_name(value: Any, valid: Callable[[str], bool], problems: list[str], problem: str) -> str:
    if isinstance(value, str) and valid(value):
        return value
    problems.append(problem)
    return ""


def _endpoint(value: Any, problems: list[str]) -> tuple[str, str]:
    if not isinstance(value, str):
        problems.append("cluster.endpoint is required, e.g. https://10.0.0.10:6443")
        return "", ""
    parts = urlsplit(value)
    port = url_port(parts)
    host = parts.hostname or ""
    if parts.scheme != "https" or not host or port == -1 or parts.path not in ("", "/"):
        problems.append(f"cluster.endpoint {shown(value)} must look like https://HOST:PORT")
        return "", ""
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        problems.append("cluster.endpoint must not hold a user name or password (it is copied into every kubeconfig)")
        return "", ""
    if parts.query or parts.fragment or value.rstrip("/").endswith(("?", "#")):
        problems.append(f"cluster.endpoint {shown(value)} must not have a query or fragment: https://HOST:PORT")
        return "", ""
    if port == 0:
        problems.append(f"cluster.endpoint {shown(value)}: port 0 is not a port a client can reach")
        return "", ""
    if not is_ip(host) and not is_dns_subdomain(host):
        problems.append(f"cluster.endpoint host {shown(host)} is neither an IP address nor a DNS name")
    return value.rstrip("/"), host


def _service_cidr(value: Any, problems: list[str]):
    try:
        network = ipaddress.ip_network(str(value), strict=True)
    except ValueError:
        problems.append(f"cluster.service_cidr {shown(value)} is not a valid CIDR such as 10.96.0.0/12")
        return None
    if network.num_addresses < 4:
        problems.append(f"cluster.service_cidr {shown(value)} is too small")
    return network


def _port(value: Any, problems: list[str]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
        problems.append(f"cluster.apiserver_port {shown(value)} must be a port number")
        return DEFAULT_APISERVER_PORT
    return value


def _duration(value: Any, where: str, problems: list[str]) -> timedelta | None:
    try:
        return parse_duration(value)
    except ValueError as err:
        problems.append(f"{where}: {err}")
        return None


def _ttl(value: Any, where: str, problems: list[str]) -> timedelta | None:
    ttl = _duration(value, where, problems)
    if ttl is None:
        return None
    if ttl <= timedelta(0):
        problems.append(f"{where} must be positive")
        return None
    return ttl


def _mount_prefix(value: Any, problems: list[str]) -> str:
    if value in (None, ""):
        return ""
    if not isinstance(value, str) or not value.endswith("/"):
        problems.append(f"vault.mount_prefix {shown(value)} must be empty or end with '/', e.g. clusters/demo/")
        return ""
    segments = value[:-1].split("/")
    if not all(_MOUNT_SEGMENT.match(s) for s in segments) or any(s in (".", "..") for s in segments):
        problems.append(f"vault.mount_prefix {shown(value)} may only hold path segments of letters, digits, '-', '_', '.'")
        return ""
    if segments[0] in _RESERVED_MOUNTS:
        problems.append(f"vault.mount_prefix {shown(value)} collides with Vault's reserved path {segments[0]}/")
    return value


def _nodes(value: Any, where: str, control_plane: bool, problems: list[str]) -> tuple[NodeSpec, ...]:
    if value is None:
        problems.append(f"{where} is required")
        return ()
    if not isinstance(value, list):
        problems.append(f"{where} must be a list of nodes")
        return ()
    nodes = []
    for index, item in enumerate(value):
        node = _node(item, f"{where}[{index}]", control_plane, problems)
        if node:
            nodes.append(node)
    return tuple(nodes)


def _node(item: Any, where: str, control_plane: bool, problems: list[str]) -> NodeSpec | None:
    if not isinstance(item, dict):
        problems.append(f"{where} must be a mapping with name and ips")
        return None
    _unknown_keys(item, where, {"name", "ips", "sans"}, problems)
    name = item.get("name")
    if not isinstance(name, str) or not is_dns_subdomain(name):
        problems.append(f"{where}.name {shown(name)} must be a DNS-1123 name (lower-case letters, digits, '-', '.')")
        return None
    ips = []
    raw_ips = item.get("ips") or []
    if not isinstance(raw_ips, list) or not raw_ips:
        problems.append(f"node {name}: ips must be a non-empty list of IP addresses")
        raw_ips = []
    for raw in raw_ips:
        try:
            ips.append(ipaddress.ip_address(str(raw)))
        except ValueError:
            problems.append(f"node {name}: {shown(raw)} is not an IP address")
    sans = item.get("sans") or []
    if not isinstance(sans, list):
        problems.append(f"node {name}: sans must be a list")
        sans = []
    for san in sans:
        if not isinstance(san, str) or not (is_ip(san) or is_dns_subdomain(san)):
            problems.append(f"node {name}: SAN {shown(san)} must be a DNS name or an IP address (no wildcards)")
    return NodeSpec(name=name, ips=tuple(ips), sans=tuple(str(s) for s in sans), control_plane=control_plane)


def _check_unique(nodes: tuple[NodeSpec, ...], problems: list[str]) -> None:
    seen_names: set[str] = set()
    seen_ips: dict[IPAddress, str] = {}
    for node in nodes:
        if node.name in seen_names:
            problems.append(f"node name {shown(node.name)} appears more than once")
        seen_names.add(node.name)
        for ip in node.ips:
            if ip in seen_ips and seen_ips[ip] != node.name:
                problems.append(f"IP {ip} is given to both {seen_ips[ip]} and {node.name}")
            seen_ips[ip] = node.name


def _service_account(section: dict, cluster_name: str, mount_prefix: str, domain: str,
                     problems: list[str]) -> SASettings:
    _unknown_keys(section, "service_account", _SA_KEYS, problems)
    key_type = section.get("key_type", DEFAULT_SA_KEY_TYPE)
    if key_type not in SA_KEY_TYPES:
        problems.append(f"service_account.key_type {shown(key_type)} is not one of {', '.join(SA_KEY_TYPES)}")
    kv_mount = section.get("kv_mount", f"{mount_prefix}{SA_KV_SUFFIX}")
    if not isinstance(kv_mount, str) or not _is_kv_mount(kv_mount):
        problems.append(f"service_account.kv_mount {shown(kv_mount)} must be a Vault path such as clusters/demo/vaultk8s")
        kv_mount = ""
    grace = DEFAULT_SA_GRACE
    if "grace_period" in section:
        parsed = _duration(section["grace_period"], "service_account.grace_period", problems)
        if parsed is not None and parsed < MIN_SA_GRACE:
            problems.append("service_account.grace_period must be at least 1h, the default projected token lifetime")
        grace = DEFAULT_SA_GRACE if parsed is None else parsed
    issuer = _issuer(section.get("issuer", f"https://kubernetes.default.svc.{domain or 'cluster.local'}"), problems)
    max_age = _ttl(section.get("max_age", "8760h"), "service_account.max_age", problems) or DEFAULT_SA_MAX_AGE
    return SASettings(key_type, kv_mount.strip("/"), f"{cluster_name}/service-account", grace, issuer, max_age)


def _issuer(value: Any, problems: list[str]) -> str:
    """kube-apiserver's --service-account-issuer as Vault's bound_issuer: an https URL, compared verbatim."""
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment \
            or url_port(parts) == -1 or parts.username is not None or any(c.isspace() for c in value):
        problems.append(f"service_account.issuer {shown(value)} must be an https URL equal to kube-apiserver's "
                        "--service-account-issuer, e.g. https://kubernetes.default.svc.cluster.local")
        return ""
    return value


def _signer(section: dict, problems: list[str]) -> SignerIdentity:
    _unknown_keys(section, "signer", _SIGNER_KEYS, problems)
    namespace = section.get("namespace", DEFAULT_SIGNER_NAMESPACE)
    account = section.get("service_account", DEFAULT_SIGNER_SERVICE_ACCOUNT)
    namespace = _dns_name(namespace, is_dns_label, problems,
                          f"signer.namespace {shown(namespace)} must be a Kubernetes namespace name (a DNS-1123 label)")
    account = _dns_name(account, is_dns_subdomain, problems,
                        f"signer.service_account {shown(account)} must be a ServiceAccount name (a DNS-1123 name)")
    return SignerIdentity(namespace, account)


def _is_kv_mount(path: str) -> bool:
    segments = path.strip("/").split("/")
    ok = all(s and s not in (".", "..") and all(c.isalnum() or c in "-_." for c in s) for s in segments)
    return ok and segments[0] not in _RESERVED_MOUNTS


def _policy(section: dict, leaf_ttl: timedelta | None, problems: list[str]) -> PolicySettings:
    found: list[str] = []  # the last check runs only if nothing else in this section is wrong
    _unknown_keys(section, "policy", _POLICY_KEYS, found)

    def ttl(key: str, default: timedelta) -> timedelta:
        if key not in section:
            return default
        value = _duration(section[key], f"policy.{key}", found)
        return timedelta(0) if value is None else value

    def count(key: str, default: int) -> int:
        value = section.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            found.append(f"policy.{key} {shown(value)} must be a whole number >= 0 (0: unlimited)")
            return default
        return value

    settings = PolicySettings(
        max_leaf_ttl=ttl("max_leaf_ttl", leaf_ttl or timedelta(0)), token_ttl=ttl("token_ttl", timedelta(hours=1)),
        token_max_ttl=ttl("token_max_ttl", timedelta(hours=4)), token_num_uses=count("token_num_uses", 64),
        secret_id_ttl=ttl("secret_id_ttl", timedelta(hours=24)), secret_id_num_uses=count("secret_id_num_uses", 0),
        bind_cidrs=bool(section.get("bind_cidrs", True)),
    )
    if settings.token_ttl > settings.token_max_ttl:
        found.append("policy.token_ttl must not exceed policy.token_max_ttl")
    if not found and settings.token_ttl <= timedelta(0):
        found.append("policy.token_ttl must be positive")
    problems.extend(found)
    return settings


def _hsm(value: Any, problems: list[str]) -> HsmSettings | None:
    """The `hsm:` block (docs/hsm.md). A PIN written in it is refused, never echoed."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append("hsm: must be a mapping with module, token_label/token_serial, pin_env/pin_file and key_type")
        return None
    found = _hsm_problems(value)
    if found:
        problems.extend(found)
        return None
    # Imported here: vaultk8s.hsm loads pkcs11, which clusters without an HSM need not install.
    from vaultk8s.hsm.settings import HsmSettings

    return HsmSettings(
        module=Path(value["module"]),
        token_label=value.get("token_label"),
        token_serial=value.get("token_serial"),
        pin_env=value.get("pin_env"),
        pin_file=Path(value["pin_file"]) if value.get("pin_file") is not None else None,
        key_type=value["key_type"],
    )


def _hsm_problems(data: dict) -> list[str]:
    problems = []
    for key in data:
        if key == "pin":
            # Never echo the value: it is a secret that should not be in the file at all.
            problems.append("hsm.pin: the PIN does not belong in the cluster file; "
                            "use pin_env (an environment variable) or pin_file (mode 0600)")
        elif key not in _HSM_KEYS:
            problems.append(f"hsm.{key}: unknown key (expected: {', '.join(_HSM_KEYS)})")
    for key in _HSM_KEYS:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            problems.append(f"hsm.{key}: must be a non-empty string")
    if data.get("module") is None:
        problems.append("hsm.module: required (path to the PKCS#11 module, "
                        "e.g. /usr/lib/softhsm/libsofthsm2.so)")
    problems += _exactly_one(data, "token_label", "token_serial", "select the token")
    problems += _exactly_one(data, "pin_env", "pin_file", "supply the PIN")
    pin_env = data.get("pin_env")
    if isinstance(pin_env, str) and pin_env and not pin_env.isidentifier():
        problems.append(f"hsm.pin_env: {shown(pin_env)} is not a valid environment variable name")
    key_type = data.get("key_type")
    if key_type is None:
        problems.append(f"hsm.key_type: required (one of {', '.join(ROOT_KEY_TYPES)})")
    elif key_type not in ROOT_KEY_TYPES:
        problems.append(f"hsm.key_type: {shown(key_type)} is not one of {', '.join(ROOT_KEY_TYPES)}")
    return problems


def _exactly_one(data: dict, first: str, second: str, purpose: str) -> list[str]:
    given = [key for key in (first, second) if data.get(key) is not None]
    if len(given) == 1:
        return []
    return [f"hsm: set exactly one of {first} or {second} to {purpose} (got {len(given)})"]


def _name_length_problems(nodes: tuple[NodeSpec, ...]) -> list[str]:
    from vaultk8s.catalog import common_name_overflows  # the catalog decides common names

    return [problem for n in nodes for problem in common_name_overflows(n.name, n.control_plane)]


def _role_collisions(nodes: tuple[NodeSpec, ...]) -> list[str]:
    from vaultk8s.catalog import role_collisions  # the catalog decides role names

    return role_collisions([(n.name, n.control_plane) for n in nodes])

