"""Which PKI roles bootstrap deletes and writes: the resolved roles against what Vault holds. Pure."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from vaultk8s.plan.actions import Action
from vaultk8s.plan.roles import ResolvedRole, role_drift


def role_actions(roles: Iterable[ResolvedRole], listed: Mapping[str, Iterable[str]],
                 observed: Mapping[tuple[str, str], dict[str, Any] | None]) -> list[Action]:
    """delete-role for each listed role nothing wants, then write-role for each missing or drifted one.

    listed: mount -> the role names found in it (PKI mounts only); observed: (mount, name) -> the
    role's parameters as read, None (or absent) when it does not exist.
    """
    roles = tuple(roles)
    wanted = {(r.mount, r.name) for r in roles}
    # A removed node's role would still let its old credential obtain certificates.
    actions = [Action("delete-role", f"{mount}/roles/{name}", "not in the catalog/cluster file")
               for mount, names in listed.items() for name in names if (mount, name) not in wanted]
    for role in roles:
        existing = observed.get((role.mount, role.name))
        drift = role_drift(role.params, existing)
        if drift:
            reason = "new role" if existing is None else "differs in " + ", ".join(drift)
            actions.append(Action("write-role", f"{role.mount}/roles/{role.name}", reason))
    return actions
