"""`vaultk8s ca rotate|status`: observe a CA mount's issuers and the leaves under --out, apply the
pure plan (plan/ca_rotation.py), then bring the files in line.

Trust bundles follow the default issuer's chain (`issuer/default/json`, which nodes may read):
stage adds the new root to it, switch makes the new root the default (its chain holds the
cross-signed certificate and the old root), retire cuts it to the new root alone. So bootstrap and
every node's agent write the same bundles as this command, in every phase.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TYPE_CHECKING

from cryptography import x509

from vaultk8s import catalog, crypto
from vaultk8s.catalog import PKI_DIR
from vaultk8s.config import ClusterConfig
from vaultk8s.errors import PlanRefused
from vaultk8s.ops.bootstrap import bootstrap
from vaultk8s.ops.cert_auth import ensure_login_trust
from vaultk8s.ops.hsm_ca import root_authority
from vaultk8s.ops.kubeconfigs import ensure_kubeconfigs
from vaultk8s.ops.leaves import observe_leaf, read_ca_state
from vaultk8s.plan import ca_rotation as plan
from vaultk8s.plan import naming
from vaultk8s.plan.actions import Action, ActionReport
from vaultk8s.plan.cas import intermediate_params, root_params
from vaultk8s.plan.resolve import resolve_all
from vaultk8s.store.atomic import check_writable, public
from vaultk8s.store.layout import NodeOutput

if TYPE_CHECKING:  # annotations only: hvac and requests load with the first command that talks to Vault
    from vaultk8s.vault.gateway import VaultGateway

# The keys kube-apiserver publishes each CA's bundle under, and only ever adds to.
CONFIGMAP_KEYS = {"kubernetes-ca": "client-ca-file", "front-proxy-ca": "requestheader-client-ca-file"}


@dataclass
class RotationReport(ActionReport):
    ca: str
    phase: str
    dry_run: bool
    state_before: str
    state_after: str = ""
    actions: list[Action] = field(default_factory=list)
    stranded: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ca": self.ca, "phase": self.phase, "dry_run": self.dry_run, "changed": self.changed,
                "state_before": self.state_before, "state_after": self.state_after,
                "stranded": self.stranded, "notes": self.notes, "actions": [a.to_dict() for a in self.actions]}


def rotate(config: ClusterConfig, out: Path, gateway: VaultGateway, ca_name: str, phase: plan.CARotationPhase, *,
           now: datetime, dry_run: bool = False, force: bool = False) -> RotationReport:
    out = Path(out)
    ca = catalog.ca(ca_name)
    mount = _check_inputs(config, out, gateway, ca, dry_run)
    issuers = observe_issuers(gateway, mount)
    result = plan.plan_rotation(mount, ca.name, phase, issuers, observe_leaves(config, out, ca.name), now,
                                config.leaf_ttl, force, hsm=config.hsm is not None)
    report = RotationReport(ca.name, phase.value, dry_run, result.rotation.state.value,
                            actions=list(result.actions), stranded=list(result.stranded))
    if dry_run:
        if result.converge_leaves:
            report.actions += [a for a in _bootstrap(config, out, gateway, now, dry_run=True) if a.kind == "issue"]
        report.state_after = report.state_before
        return report
    token_needed = config.hsm is not None and any(a.kind in ("hsm-generation", "cross-sign") for a in result.actions)
    # The token is opened (PIN, module) before the first Vault write, so a bad PIN changes nothing.
    with (root_authority(config) if token_needed else contextlib.nullcontext()) as authority:
        for action in result.actions:
            _apply(action, ca, config, gateway, mount, result, authority, now)
    if ca.name == catalog.LOGIN_CA:  # nodes log in with leaves of this CA: their entries follow the bundle
        report.actions += ensure_login_trust(config, gateway)
    if result.converge_leaves:
        # bootstrap re-issues every leaf not signed by the default issuer, rewrites bundles and
        # kubeconfigs: the same code a re-run of bootstrap (or an agent) takes after switch.
        report.actions += _bootstrap(config, out, gateway, now, dry_run=False)
    else:
        report.actions += write_bundles(config, out, gateway, ca)
    report.state_after = plan.classify(mount, observe_issuers(gateway, mount)).state.value
    if any(a.kind == "retire-issuer" for a in result.actions) and ca.name in CONFIGMAP_KEYS:
        report.notes.append(f"kube-apiserver never drops the old root from ConfigMap kube-system/"
                            f"extension-apiserver-authentication ({CONFIGMAP_KEYS[ca.name]}): replace it with "
                            f"{ca.cert_file} as docs/ca-rotation.md shows (vaultk8s does not call the Kubernetes API)")
    return report


def _check_inputs(config: ClusterConfig, out: Path, gateway: VaultGateway, ca: catalog.CASpec,
                  dry_run: bool) -> str:
    """Everything that can be refused is refused here, before any write."""
    missing = [n.name for n in config.nodes if not (out / n.name / PKI_DIR).is_dir()]
    if missing:
        raise PlanRefused(f"{out} has no pki/ for node(s) {', '.join(missing)}: run `vaultk8s bootstrap` first")
    if not dry_run:
        check_writable(out)
    gateway.check_ready()
    mount = config.mount(ca.name)
    if gateway.mount_type(mount) != "pki":
        raise PlanRefused(f"{mount} is not a PKI mount: run `vaultk8s bootstrap` first")
    return mount


def _bootstrap(config: ClusterConfig, out: Path, gateway: VaultGateway, now: datetime, dry_run: bool) -> list[Action]:
    return bootstrap(config, out, gateway, now=now, dry_run=dry_run).actions


# --- observing ------------------------------------------------------------------------------------

def observe_issuers(gateway: VaultGateway, mount: str) -> list[plan.IssuerView]:
    views = []
    for issuer_id, info in gateway.list_issuers(mount).items():
        data = gateway.read_issuer(mount, issuer_id)
        if not data:
            continue  # deleted between LIST and read
        views.append(plan.IssuerView(
            id=issuer_id, name=data.get("issuer_name") or "", cert=crypto.load_cert(data["certificate"]),
            key_id=data.get("key_id") or None,
            usage=frozenset(u for u in (data.get("usage") or "").split(",") if u),
            manual_chain=tuple(data.get("manual_chain") or ()), default=bool((info or {}).get("is_default")),
        ))
    return views


def observe_leaves(config: ClusterConfig, out: Path, ca_name: str) -> list[plan.LeafView]:
    leaves = []
    for rc in resolve_all(config):
        if rc.spec.ca != ca_name:
            continue
        cert = observe_leaf(NodeOutput(out, rc.node), rc).cert
        if cert is not None:
            leaves.append(plan.LeafView(f"{rc.node}/{PKI_DIR}/{rc.cert_file}", cert))
    return leaves


# --- applying -------------------------------------------------------------------------------------

def _apply(action: Action, ca: catalog.CASpec, config: ClusterConfig, gateway: VaultGateway, mount: str,
           result: plan.RotationPlan, authority: Any, now: datetime) -> None:
    """One step; ids are looked up afresh, since an earlier step (generate-root) makes them."""
    issuers = observe_issuers(gateway, mount)
    rotation = plan.classify(mount, issuers)
    name = action.target.rpartition("/")[2]
    if action.kind == "generate-root":
        gateway.generate_root_issuer(mount, {**root_params(ca, config), "issuer_name": name, "key_name": name})
    elif action.kind == "hsm-generation":
        _hsm_generation(authority, config, gateway, mount, ca, name, now)
    elif action.kind == "cross-sign" and plan.vault_root_under_hsm(rotation, authority is not None):
        # The new token root re-signed by the old root in Vault: the same cross-signed root the
        # token makes in HSM mode, so leaves chain intermediate -> cross root -> old root alike.
        new_root = crypto.cert_pem(plan.anchor_of(rotation.new, issuers).cert).decode()
        _import_named(gateway, mount, gateway.sign_self_issued(mount, rotation.old.id, new_root), name)
    elif action.kind == "cross-sign" and authority is not None:
        new_root = plan.anchor_of(rotation.new, issuers)
        cross = authority.cross_sign(naming.token_root_name(ca.name, rotation.old.generation), new_root.cert, now)
        _import_named(gateway, mount, crypto.cert_pem(cross).decode(), name)
    elif action.kind == "cross-sign":
        _cross_sign(gateway, mount, ca, rotation, name)
    elif action.kind == "chain-issuer" and rotation.state is plan.State.STAGED:
        gateway.patch_issuer(mount, rotation.old.id, {"manual_chain": list(plan.staged_chain(rotation, issuers))})
    elif action.kind == "chain-issuer":
        gateway.patch_issuer(mount, rotation.new.id, {"manual_chain": list(plan.retired_chain(rotation, issuers))})
    elif action.kind == "set-default":
        gateway.set_default_issuer(mount, rotation.new.id)
    elif action.kind == "retire-issuer":
        gateway.patch_issuer(mount, rotation.old.id, {"usage": plan.retired_usage(rotation.old.cert), "issuer_name": result.retired_as,
                                                      "manual_chain": []})
    elif action.kind == "delete-issuer":
        gateway.delete_issuer(mount, name)
    elif action.kind == "delete-key":
        gateway.delete_key(mount, name)


def _cross_sign(gateway: VaultGateway, mount: str, ca: catalog.CASpec, rotation: plan.Rotation, name: str) -> None:
    """The new key signed by the old root (intermediate/cross-sign + sign-intermediate with the CSR's
    values: OpenSSL accepts that chain, unlike sign-self-issued's), imported under `name`."""
    old, new = rotation.old, rotation.new
    csr = gateway.cross_sign_csr(mount, {"common_name": ca.common_name, "key_ref": new.key_id,
                                         "exclude_cn_from_sans": True})
    not_after = old.cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")  # never beyond the signer
    pem = gateway.sign_intermediate(mount, old.id, {"csr": csr, "use_csr_values": True, "not_after": not_after,
                                                     "format": "pem"})
    _import_named(gateway, mount, pem, name)


def _import_named(gateway: VaultGateway, mount: str, pem: str, name: str) -> None:
    imported = gateway.import_issuer_cert(mount, pem)
    if len(imported) != 1:
        raise PlanRefused(f"{mount}: importing the cross-signed certificate made {len(imported)} issuers, not one")
    gateway.patch_issuer(mount, imported[0], {"issuer_name": name})


def _hsm_generation(authority: Any, config: ClusterConfig, gateway: VaultGateway, mount: str, ca: catalog.CASpec,
                    name: str, now: datetime) -> None:
    """HSM mode's stage: a new root in the token (generated there, never extractable), a new key
    and CSR in the mount, the intermediate the new root signs, installed beside the old one."""
    generation = naming.generation_of(name)
    token_name = naming.token_root_name(ca.name, generation)
    new_root = authority.ensure_root(token_name, ca.common_name, config.ca_ttl, now)
    csr_pem, key_id = gateway.generate_intermediate_csr(mount, {**intermediate_params(ca, config), "key_name": name})
    intermediate = authority.sign_intermediate(token_name, x509.load_pem_x509_csr(csr_pem.encode()), config.ca_ttl, now)
    mapping = gateway.set_signed_intermediate(mount, (crypto.cert_pem(intermediate) + crypto.cert_pem(new_root)).decode())
    for issuer_id, key in mapping.items():
        gateway.patch_issuer(mount, issuer_id, {"issuer_name": name if key == key_id else naming.hsm_root_name(generation)})


def write_bundles(config: ClusterConfig, out: Path, gateway: VaultGateway, ca: catalog.CASpec) -> list[Action]:
    """This CA's trust bundle on every node that holds it, then the kubeconfigs that embed ca.crt."""
    bundle = read_ca_state(gateway, config.mount(ca.name)).bundle_pem
    actions = []
    for node in config.nodes:
        if ca not in catalog.cas_for(node.control_plane):
            continue
        if NodeOutput(out, node.name).update_pki({ca.cert_file: public(bundle)}):
            count = len(crypto.load_certs(bundle))
            actions.append(Action("write-file", f"{node.name}/{PKI_DIR}/{ca.cert_file}", f"trust bundle of {count} root(s)"))
    return actions + ensure_kubeconfigs(config, out)


# --- status ---------------------------------------------------------------------------------------

def status(config: ClusterConfig, out: Path, gateway: VaultGateway) -> list[dict[str, Any]]:
    gateway.check_ready()
    return [_ca_status(config, Path(out), gateway, ca) for ca in catalog.CAS]


def _ca_status(config: ClusterConfig, out: Path, gateway: VaultGateway, ca: catalog.CASpec) -> dict[str, Any]:
    mount = config.mount(ca.name)
    if gateway.mount_type(mount) != "pki":
        return {"ca": ca.name, "mount": mount, "state": "missing", "next": "bootstrap", "issuers": [], "unknown_leaves": 0}
    issuers = observe_issuers(gateway, mount)
    rotation = plan.classify(mount, issuers)
    counts = plan.leaves_by_issuer(observe_leaves(config, out, ca.name), issuers)
    roles = {rotation.current.id: "current"}
    for role in ("old", "new", "cross"):
        issuer = getattr(rotation, role)
        if issuer is not None and issuer.id not in roles:
            roles[issuer.id] = role
    rows = [{
        "name": i.name, "id": i.id, "role": "retired" if i.is_retired else roles.get(i.id, "chain"),
        "subject": i.cert.subject.rfc4514_string(), "not_after": i.cert.not_valid_after_utc.isoformat(),
        "issuing": plan.ISSUING in i.usage, "default": i.default, "leaves": len(counts.get(i.id, [])),
    } for i in sorted(issuers, key=lambda i: (i.generation, i.name))]
    return {"ca": ca.name, "mount": mount, "state": rotation.state.value, "next": plan.next_step(rotation),
            "issuers": rows, "unknown_leaves": len(counts.get("unknown", []))}
