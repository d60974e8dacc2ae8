"""Who may do what: each identity kind's Vault ACL grants, from the catalog and the cluster file. Pure.

The model (docs/policies.md): one policy per identity kind. Per-node certificates are granted
through the templated path `<mount>/sign/<cert>-{{identity.entity.metadata.node}}`; the `node`
metadata lives on one identity entity per node, written only by `vaultk8s policy apply`, and the
node's AppRole role_id and token role are aliases of that entity. So worker-1's credential resolves
the template to worker-1 and nothing else; a token without that entity resolves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from vaultk8s import catalog
from vaultk8s.catalog import IdentitySpec, Placement
from vaultk8s.config import ClusterConfig, NodeSpec
from vaultk8s.plan.naming import (CSR_SIGNER_APPROLE_ROLE, CSR_SIGNER_JWT_ROLE, NODE_TEMPLATE, approle_mount,
                                  approle_role, cert_entry, cert_mount, entity_name, jwt_mount, policy_name)
from vaultk8s.plan.resolve import resolve_all, role_name

OPERATOR = "operator"
AGENT = "agent"
AUDITOR = "auditor"
CSR_SIGNER = "csr-signer"

SIGN_CAPS = ("create", "update")
READ_CAPS = ("read",)

# Token self-management for the agent; everything else of Vault's `default` policy is withheld
# (roles are created with token_no_default_policy).
_AGENT_PATHS = (
    ("auth/token/lookup-self", ("read",), "the agent checks its token"),
    ("auth/token/renew-self", ("update",), "the agent renews its own token"),
    ("auth/token/revoke-self", ("update",), "the agent drops its token on shutdown"),
)


@dataclass(frozen=True)
class Grant:
    path: str
    capabilities: tuple[str, ...]
    comment: str = ""
    # Vault's allowed_parameters: (name, allowed values) pairs; () values means any value. Set, it
    # denies every other parameter, so a write can change only these fields of the object.
    allowed_parameters: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def key(self) -> tuple:
        """What a policy grants here, without the comment: capabilities and parameter limits."""
        return (self.path, tuple(sorted(self.capabilities)), tuple(sorted(self.allowed_parameters)))


def agent_grants(config: ClusterConfig) -> list[Grant]:
    """Token self-management, and the node's own enrolment secret_id: the agent reads its expiry and,
    once the node's certificate logs in, destroys it (templated: another node's is out of reach)."""
    role = f"auth/{approle_mount(config)}/role/{approle_role(NODE_TEMPLATE)}"
    return [Grant(p, c, why) for p, c, why in _AGENT_PATHS] + [
        Grant(f"{role}/secret-id/lookup", ("update",), "the agent reads its enrolment secret_id's expiry"),
        Grant(f"{role}/secret-id/destroy", ("update",), "the agent destroys its enrolment secret_id once enrolled"),
    ]


def policy_kinds() -> tuple[str, ...]:
    return (OPERATOR, AUDITOR, AGENT) + tuple(i.name for i in catalog.IDENTITIES)


def node_policy_kinds(node: NodeSpec) -> tuple[str, ...]:
    """The identity kinds whose policies a node's machine credential carries."""
    kinds = [AGENT]
    for ident in catalog.IDENTITIES:
        if ident.attach is Placement.ALL_NODES or (ident.attach is Placement.CONTROL_PLANE and node.control_plane):
            kinds.append(ident.name)
    return tuple(kinds)


def _ca_reads(mounts: list[str]) -> list[Grant]:
    grants = []
    for mount in mounts:
        grants.append(Grant(f"{mount}/cert/ca_chain", READ_CAPS, "CA chain"))
        grants.append(Grant(f"{mount}/crl/pem", READ_CAPS, "CRL"))
        grants.append(Grant(f"{mount}/issuer/default/json", READ_CAPS, "CA certificate and chain"))
    return grants


def _subject_comment(spec: catalog.CertSpec) -> str:
    cn = spec.common_name.replace(catalog.NODE, "<node>")
    org = f", O={spec.organization}" if spec.organization else ", no O"
    usages = "+".join(sorted(u.value for u in spec.usages))
    return f"CN={cn}{org}, {usages}"


def identity_grants(ident: IdentitySpec, config: ClusterConfig) -> list[Grant]:
    """sign (never issue: keys stay on the node) on exactly this identity's roles, plus CA reads."""
    grants, mounts = [], []
    for cert_name in ident.certs:
        spec = catalog.cert(cert_name)
        mount = config.mount(spec.ca)
        mounts.append(mount)
        if ident.every_node:  # explicit per-node paths: a glob would reach other identities' roles
            for node in config.nodes:
                if spec in catalog.certs_for(node.control_plane):
                    grants.append(Grant(f"{mount}/sign/{role_name(spec, node.name)}", SIGN_CAPS,
                                        f"{node.name}: {_subject_comment(spec)}".replace("<node>", node.name)))
            continue
        role = role_name(spec, NODE_TEMPLATE)
        grants.append(Grant(f"{mount}/sign/{role}", SIGN_CAPS, _subject_comment(spec)))
    return grants + _ca_reads(sorted(set(mounts)))


def operator_grants(config: ClusterConfig) -> list[Grant]:
    """What `vaultk8s bootstrap`, `node credentials` and `node revoke` call, on this cluster only."""
    grants = [Grant("auth/token/lookup-self", READ_CAPS, "check the token before any change")]
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        grants += [
            Grant(f"sys/mounts/{mount}", ("create", "read", "update"), "enable and inspect this CA mount only"),
            Grant(f"sys/mounts/{mount}/tune", ("read", "update"), "CA TTL tuning"),
            Grant(f"{mount}/root/generate/internal", SIGN_CAPS, "generate the root once; the key stays in Vault"),
            Grant(f"{mount}/issuer/default/json", READ_CAPS, "CA certificate"),
            Grant(f"{mount}/config/urls", ("read", "update"), "issuing/CRL URLs"),
            Grant(f"{mount}/config/auto-tidy", ("read", "update"), "remove expired leaves from the store"),
            Grant(f"{mount}/roles", ("list",), "find stale roles"),
            Grant(f"{mount}/roles/+", ("create", "delete", "read", "update"),
                  "write catalog roles, delete roles of removed nodes"),
        ]
        grants += _ca_rotation_grants(mount)
        if config.hsm is not None:
            grants += _hsm_intermediate_grants(mount)
    grants += _service_account_grants(config)
    grants += _signer_jwt_config_grants(config)
    for rc in sorted({(rc.mount, rc.role) for rc in resolve_all(config)}):
        grants.append(Grant(f"{rc[0]}/sign/{rc[1]}", SIGN_CAPS, "initial issuance by bootstrap"))
    am = approle_mount(config)
    signer = f"auth/{am}/role/{CSR_SIGNER_APPROLE_ROLE}"
    grants += [Grant(f"{signer}/role-id", READ_CAPS, "csr-signer: signer credentials"),
               Grant(f"{signer}/secret-id", ("create", "list", "update"), "csr-signer: issue and list secret_ids"),
               _secret_id_destroy(signer, "csr-signer"),
               _secret_id_lookup(signer, "csr-signer")]
    for node in config.nodes:
        role = f"auth/{am}/role/{approle_role(node.name)}"
        grants += [
            Grant(f"{role}/role-id", READ_CAPS, f"{node.name}: node credentials"),
            Grant(f"{role}/secret-id", ("create", "list", "update"), f"{node.name}: issue and list secret_ids"),
            Grant(f"{role}/secret-id-accessor/destroy", ("update",), f"{node.name}: node revoke"),
            _secret_id_destroy(role, node.name),
            _secret_id_lookup(role, node.name),
            Grant(f"auth/token/create/{entity_name(config, node.name)}", SIGN_CAPS, f"{node.name}: plain token file"),
            Grant(f"identity/entity/name/{entity_name(config, node.name)}", ("create", "delete", "read", "update"),
                  f"{node.name}: node revoke kills the node's live tokens, leaves a disabled marker",
                  (("disabled", ()), ("metadata", ()))),
            Grant(f"auth/{cert_mount(config)}/certs/{cert_entry(node.name)}", ("delete", "read", "update"),
                  f"{node.name}: bootstrap and ca rotate keep its certificate login's trust; node revoke",
                  (("certificate", ()),)),
        ]
    return grants


def _secret_id_destroy(role_path: str, who: str) -> Grant:
    """Writing credentials over a directory destroys the secret_id it held (the operator must hold it)."""
    return Grant(f"{role_path}/secret-id/destroy", ("update",),
                 f"{who}: credentials written over a directory destroy the secret_id it held", (("secret_id", ()),))


def _secret_id_lookup(role_path: str, who: str) -> Grant:
    """`vaultk8s status`: a secret_id's expiry by its accessor (metadata only, never the secret_id)."""
    return Grant(f"{role_path}/secret-id-accessor/lookup", ("update",), f"{who}: status shows secret_id expiry",
                 (("secret_id_accessor", ()),))


def _hsm_intermediate_grants(mount: str) -> list[Grant]:
    """HSM mode: the mount holds an intermediate whose CSR the token's root signs (docs/hsm.md)."""
    return [
        Grant(f"{mount}/intermediate/generate/internal", SIGN_CAPS, "HSM mode: intermediate key stays in Vault, CSR out"),
        Grant(f"{mount}/intermediate/set-signed", SIGN_CAPS, "HSM mode: install the intermediate the HSM root signed"),
    ]


def _ca_rotation_grants(mount: str) -> list[Grant]:
    """`ca rotate` (docs/ca-rotation.md): issuers beside the current one, cross-signing, the default
    issuer, retiring and deleting old issuers; HSM mode's bootstrap uses the last three too."""
    return [
        Grant(f"{mount}/issuers", ("list",), "ca rotate/status: every issuer of the mount"),
        Grant(f"{mount}/issuers/generate/root/internal", SIGN_CAPS, "ca rotate: a new root beside the old one"),
        Grant(f"{mount}/issuers/import/cert", SIGN_CAPS, "ca rotate: import the cross-signed certificate"),
        Grant(f"{mount}/intermediate/cross-sign", SIGN_CAPS, "ca rotate: CSR of the new key for the old root"),
        Grant(f"{mount}/issuer/+/sign-intermediate", SIGN_CAPS, "ca rotate: the old root cross-signs the new key"),
        Grant(f"{mount}/config/issuers", ("read", "update"), "the default issuer (HSM intermediate, ca rotate switch)"),
        Grant(f"{mount}/issuer/+", ("delete", "patch", "read"),
              "ca rotate: chain, names and usage of issuers; delete retired ones (and half-installed ones)"),
        Grant(f"{mount}/key/+", ("delete", "read"), "delete a retired root's key (or a dangling one after a failure)"),
    ]


def _service_account_grants(config: ClusterConfig) -> list[Grant]:
    """The service-account key set: only this cluster's secret, read and check-and-set written, its
    metadata, and destroy of its old versions. No delete (metadata delete would drop the whole
    history including the current key), no undelete, no list, nothing else in the KV mount."""
    sa = config.service_account
    return [
        Grant(f"sys/mounts/{sa.kv_mount}", ("create", "read", "update"), "enable and inspect the service-account KV mount"),
        Grant(f"{sa.kv_mount}/data/{sa.kv_path}", ("create", "read", "update"),
              "service-account key set (private signing keys): bootstrap, sa rotate, sa status"),
        Grant(f"{sa.kv_mount}/metadata/{sa.kv_path}", ("create", "read", "update"),
              "service-account key set metadata: bootstrap bounds max_versions, retire finds versions to destroy"),
        Grant(f"{sa.kv_mount}/destroy/{sa.kv_path}", ("update",),
              "service-account key set: retire permanently destroys older versions (retired private keys)"),
    ]


def _signer_jwt_config_grants(config: ClusterConfig) -> list[Grant]:
    """bootstrap and `sa rotate` keep the JWT mount's keys equal to sa.pub's: only those keys, and
    the issuer only as the cluster file has it (Vault resets a field a config write omits)."""
    limits = (("bound_issuer", (config.service_account.issuer,)), ("jwt_validation_pubkeys", ()))
    return [Grant(f"auth/{jwt_mount(config)}/config", ("read", "update"),
                  "the signer's JWT login: service-account public keys, kept equal to sa.pub", limits)]


def auditor_grants(config: ClusterConfig) -> list[Grant]:
    """Read-only: what `policy diff` and `policy review` read. No secret_ids, no signing."""
    grants = [Grant("auth/token/lookup-self", READ_CAPS, "check the token"),
              Grant("sys/auth", READ_CAPS, "find the AppRole, cert and token mounts (names and accessors only)"),
              Grant(f"{config.mount(catalog.LOGIN_CA)}/issuer/default/json", READ_CAPS,
                    "the CA bundle certificate logins trust (public)")]
    for kind in policy_kinds():
        grants.append(Grant(f"sys/policies/acl/{policy_name(config, kind)}", READ_CAPS, "compare with policies/"))
    for ca in catalog.CAS:
        mount = config.mount(ca.name)
        grants += [Grant(f"{mount}/roles", ("list",), "role inventory"),
                   Grant(f"{mount}/roles/+", READ_CAPS, "role parameters")]
    am = approle_mount(config)
    cm = cert_mount(config)
    grants += [Grant(f"auth/{am}/role", ("list",), "machine-credential inventory"),
               Grant(f"auth/{am}/role/+", READ_CAPS, "token limits of node credentials"),
               Grant(f"auth/{cm}/certs", ("list",), "certificate-login inventory"),
               Grant(f"auth/{cm}/certs/+", READ_CAPS, "certificate logins: trust, CN, token limits")]
    jm = jwt_mount(config)
    grants += [Grant(f"auth/{jm}/config", READ_CAPS, "the signer's JWT login: public keys and issuer"),
               Grant(f"auth/{jm}/role/{CSR_SIGNER_JWT_ROLE}", READ_CAPS, "the signer's JWT role")]
    # Nodes removed from the cluster file are found by listing (names only, every cluster's and
    # foreign ones alike) and reading candidates named under this cluster's scheme.
    scheme = entity_name(config, "")
    grants += [Grant("auth/token/roles", ("list",), "find token roles of removed nodes (names only)"),
               Grant(f"auth/token/roles/{scheme}*", READ_CAPS, "node token roles, including removed nodes'"),
               Grant("identity/entity/name", ("list",), "find identities of removed nodes (names only)"),
               Grant(f"identity/entity/name/{scheme}*", READ_CAPS,
                     "node bindings (metadata, aliases), including removed nodes'")]
    return grants


def grants_for(kind: str, config: ClusterConfig) -> list[Grant]:
    if kind == OPERATOR:
        grants = operator_grants(config)
    elif kind == AUDITOR:
        grants = auditor_grants(config)
    elif kind == AGENT:
        grants = agent_grants(config)
    else:
        grants = identity_grants(_identity(kind), config)
    if kind == CSR_SIGNER:
        grants += signer_secret_id_grants(config)
    return sorted(grants, key=lambda g: g.path)


def signer_secret_id_grants(config: ClusterConfig) -> list[Grant]:
    """A signer on AppRole keeps its own secret_id fresh: it reads its expiry, makes the next one with
    nothing the role does not set (no TTL, uses or CIDRs of its choosing: metadata may only be empty),
    and destroys the old one. Each path needs the secret_id itself, so only its holder gets that far."""
    role = f"auth/{approle_mount(config)}/role/{CSR_SIGNER_APPROLE_ROLE}"
    return [Grant(f"{role}/secret-id/lookup", ("update",),
                  "a signer on AppRole exports its own secret_id's expiry (it must hold the secret_id)",
                  (("secret_id", ()),)),
            Grant(f"{role}/secret-id", ("update",),
                  "a signer on AppRole replaces its secret_id at 2/3 of its life, on the role's terms only",
                  (("metadata", ("",)),)),
            Grant(f"{role}/secret-id/destroy", ("update",),
                  "then it destroys the one it replaced (it must hold the secret_id)", (("secret_id", ()),))]


def _identity(kind: str) -> IdentitySpec:
    for ident in catalog.IDENTITIES:
        if ident.name == kind:
            return ident
    raise KeyError(kind)


_DESCRIPTIONS = {
    OPERATOR: "the bootstrap operator: creates this cluster's CA mounts and roles and issues the first "
              "certificates. Powerful by design (it writes roles); hand it to people, never to nodes.",
    AUDITOR: "a read-only reviewer: reads policies, roles and node credential settings; cannot sign.",
    AGENT: "token self-management (lookup, renew, revoke its own token) and the node's own enrolment "
           "secret_id (expiry, destroy); carried by every node credential and by the CSR signer's.",
}


def describe(kind: str) -> str:
    return _DESCRIPTIONS.get(kind) or _identity(kind).description
