"""Values whose repr hides them. pytest prints fixture values, frame arguments and assertion operands
in its failure output; a Vault token or a bootstrap token must never end up there."""

from __future__ import annotations


class RedactedEnv(dict):
    """A VAULT_* environment (or any dict of secrets): works as a dict, prints its keys only."""

    def __repr__(self) -> str:
        return "RedactedEnv(" + ", ".join(f"{k}=***" for k in self) + ")"

    __str__ = __repr__


class Secret(str):
    """A token: str() and f-strings give the value (to write it where it belongs), repr() does not."""

    def __repr__(self) -> str:
        return "'***'"
