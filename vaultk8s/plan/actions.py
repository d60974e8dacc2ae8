"""Plan steps: what would change, and why. Rendered by --dry-run and by the apply report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    kind: str  # enable-mount | tune-mount | generate-root | hsm-intermediate | configure-urls | configure-tidy
    #          | write-role
    #          | delete-role | issue | write-file | generate-key | write-kv (service-account key set)
    #          | delete-approle | delete-token-role | delete-entity (policy apply: removed nodes)
    #          | import-ca | import-sa-key | remove-file (adopt)
    target: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        # Not dataclasses.asdict: it deep-copies, and a 1000-node report holds ~7,000 actions.
        return {"kind": self.kind, "target": self.target, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.kind:<15} {self.target}  ({self.reason})"


class ActionReport:
    """Mixed into a command's report (bootstrap, ca rotate, policy apply): its actions, done or,
    on a dry run, planned; `changed` when there is any."""

    actions: list[Action]

    @property
    def changed(self) -> bool:
        return bool(self.actions)
