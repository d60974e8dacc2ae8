"""Kubeconfig documents from catalog.KUBECONFIGS, per node. Pure: PEM bytes come in, YAML goes out.

Configs of components the agent renews reference `pki/<file>` paths, which client-go resolves
against the kubeconfig's own directory and re-reads when the files change; admin configs embed
the cert and key so they can be copied off the node. `kubeconfigs.embed_client_certs: true` (the
kubeadm-shaped tree kubeadm's own tools accept) embeds them in every config.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import yaml

from vaultk8s import catalog
from vaultk8s.catalog import NODE, PKI_DIR, KubeconfigSpec, Server
from vaultk8s.config import ClusterConfig, NodeSpec

CA_FILE = catalog.ca("kubernetes-ca").cert_file
# libyaml's safe loader and dumper when PyYAML has them: the same documents and bytes, 10-30x
# faster (a 1000-node bootstrap renders and re-parses ~2,000 kubeconfigs).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SAFE_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True)
class ResolvedKubeconfig:
    spec: KubeconfigSpec
    node: str
    cluster: str
    server: str
    user: str  # the client cert's CN, as kubeadm names its users
    organization: str | None
    cert_file: str  # relative to pki/
    key_file: str
    embed: bool  # the catalog says so (admin configs), or the cluster is kubeadm-shaped

    @property
    def file(self) -> str:
        return self.spec.file


def local_server(node: NodeSpec, config: ClusterConfig) -> str:
    ip = node.ips[0]
    host = f"[{ip}]" if isinstance(ip, ipaddress.IPv6Address) else str(ip)
    return f"https://{host}:{config.apiserver_port}"


def resolve_kubeconfig(spec: KubeconfigSpec, node: NodeSpec, config: ClusterConfig) -> ResolvedKubeconfig:
    cert = catalog.cert(spec.cert)
    server = local_server(node, config) if spec.server is Server.LOCAL else config.endpoint
    return ResolvedKubeconfig(
        spec=spec, node=node.name, cluster=config.name, server=server,
        user=cert.common_name.replace(NODE, node.name), organization=cert.organization,
        cert_file=cert.cert_file, key_file=cert.key_file, embed=spec.embed_cert or config.embed_client_certs,
    )


def resolve_node_kubeconfigs(node: NodeSpec, config: ClusterConfig) -> tuple[ResolvedKubeconfig, ...]:
    return tuple(resolve_kubeconfig(k, node, config) for k in catalog.kubeconfigs_for(node.control_plane))


def render_document(rk: ResolvedKubeconfig, ca_pem: bytes, cert_pem: bytes | None = None,
                    key_pem: bytes | None = None) -> dict[str, Any]:
    """The kubeconfig as a mapping; embedded configs need the cert and key PEM."""
    if rk.embed:
        if cert_pem is None or key_pem is None:
            raise ValueError(f"{rk.file} embeds its credentials: cert and key are required")
        user = {"client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)}
    else:
        user = {"client-certificate": f"{PKI_DIR}/{rk.cert_file}", "client-key": f"{PKI_DIR}/{rk.key_file}"}
    context = f"{rk.user}@{rk.cluster}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": rk.cluster,
                      "cluster": {"certificate-authority-data": _b64(ca_pem), "server": rk.server}}],
        "contexts": [{"name": context, "context": {"cluster": rk.cluster, "user": rk.user}}],
        "current-context": context,
        "preferences": {},
        "users": [{"name": rk.user, "user": user}],
    }


def render_kubeconfig(rk: ResolvedKubeconfig, ca_pem: bytes, cert_pem: bytes | None = None,
                      key_pem: bytes | None = None) -> bytes:
    """The YAML of render_document, byte for byte what yaml.dump makes of it."""
    return dump_yaml(render_document(rk, ca_pem, cert_pem, key_pem)).encode()


# PyYAML's representer costs ~0.4 ms a kubeconfig, most of a 1000-node bootstrap's kubeconfig
# phase. Documents of one shape differ only in their strings, so each shape is dumped once with
# placeholders, and strings YAML writes bare (plain scalars) are put in their place; a document
# with any other string is dumped whole. tests/unit/test_kubeconfig_yaml.py holds the two equal.
_PLACEHOLDER = re.compile(r"VAULTK8SPLACEHOLDER(\d{4})X")
_PLAIN_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+/=._@:-]*")


def dump_yaml(doc: Any) -> str:
    values: list[str] = []
    skeleton = _hollow(doc, values)
    if len(values) > 9999 or not all(_bare(v) for v in values):
        return yaml.dump(doc, Dumper=_SAFE_DUMPER, sort_keys=False)
    return _PLACEHOLDER.sub(lambda m: values[int(m.group(1))], _skeleton_yaml(skeleton))


def _hollow(node: Any, values: list[str]) -> Any:
    """node with every string value (not key) replaced by a numbered placeholder, appended to values."""
    if isinstance(node, str):
        values.append(node)
        return f"VAULTK8SPLACEHOLDER{len(values) - 1:04d}X"
    if isinstance(node, dict):
        return {key: _hollow(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_hollow(item, values) for item in node]
    return node


def _skeleton_yaml(skeleton: Any) -> str:
    key = repr(skeleton)
    text = _SKELETONS.get(key)
    if text is None:
        text = yaml.dump(skeleton, Dumper=_SAFE_DUMPER, sort_keys=False)
        if len(_SKELETONS) < 64:  # kubeconfigs come in a few shapes
            _SKELETONS[key] = text
    return text


_SKELETONS: dict[str, str] = {}
_RESOLVER = yaml.resolver.Resolver()  # the implicit types yaml.dump checks a string against


def _bare(value: str) -> bool:
    """yaml.dump writes value as it is: only plain-scalar characters, not ending in ':' (a key
    indicator), and not read back as anything but a string (true, 1.5, null, a date...)."""
    return (_PLAIN_SAFE.fullmatch(value) is not None and not value.endswith(":")
            and _RESOLVER.resolve(yaml.ScalarNode, value, (True, False)) == "tag:yaml.org,2002:str")


def kubeconfig_drift(desired: dict[str, Any], observed_yaml: bytes | None) -> str | None:
    """Why an existing kubeconfig must be rewritten, or None to keep it (cosmetic edits are kept)."""
    if observed_yaml is None:
        return "missing"
    try:
        observed = yaml.load(observed_yaml, Loader=_SAFE_LOADER)
        have = _essentials(observed)
    except (yaml.YAMLError, AttributeError, KeyError, IndexError, TypeError):
        return "unreadable"
    want = _essentials(desired)
    if have["ca"] != want["ca"]:
        return "CA changed"
    if have["server"] != want["server"]:
        return "server changed"
    if have["user"][0] != want["user"][0]:
        return "identity changed"
    if have["user"] != want["user"]:
        # Embedded: admin.crt was re-issued (new expiry); by path: the files named changed.
        return "client certificate re-issued" if want["user"][1] != have["user"][1] and _embedded(want) else "identity changed"
    return None


def _embedded(essentials: dict[str, Any]) -> bool:
    return dict(essentials["user"][1]).get("client-certificate-data") is not None


def _essentials(doc: dict[str, Any]) -> dict[str, Any]:
    """What the file means: the current context's CA, server and credentials."""
    context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    cluster = next(c["cluster"] for c in doc["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in doc["users"] if u["name"] == context["user"])
    creds = {k: user.get(k) for k in ("client-certificate", "client-key", "client-certificate-data",
                                      "client-key-data")}
    return {"ca": cluster.get("certificate-authority-data"), "server": cluster.get("server"),
            "user": (context["user"], tuple(sorted(creds.items())))}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
