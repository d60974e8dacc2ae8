"""The error hierarchy. Every message is one line a user can act on; the CLI prints it and exits."""

import reprlib

MAX_PROBLEMS = 20  # a file with thousands of mistakes still gets a readable line
MAX_PROBLEM_CHARS = 240
MAX_MESSAGE_CHARS = 1000

_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxdict = _SHOW.maxset = 4
_SHOW.maxlevel = 2


def shown(value: object) -> str:
    """A user's value as it goes into a message: repr'd, bounded however large or deep it is."""
    return _SHOW.repr(value)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Collapse to one line of at most `limit` characters, so no input can flood a terminal or log."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 15] + " ... (truncated)"


class VaultK8sError(Exception):
    """Base class: an expected failure with a one-line, actionable message.

    A subclass names its CLI exit code in its class line (`class X(VaultK8sError, exit_code=4)`);
    one that does not keeps its parent's.
    """

    exit_code = 1

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class ConfigError(VaultK8sError, exit_code=2):
    """The cluster file is invalid. Carries every problem found, one per line."""

    def __init__(self, problems: list[str] | str, source: str = "cluster file"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(one_line(f"{source}: " + "; ".join(_within_budget(self.problems))))


def _within_budget(problems: list[str]) -> list[str]:
    """As many problems as fit one message, then how many more there are."""
    shown_problems: list[str] = []
    used = 0
    for index, problem in enumerate(problems):
        text = one_line(problem, MAX_PROBLEM_CHARS)
        if index >= MAX_PROBLEMS or used + len(text) > MAX_MESSAGE_CHARS - 200:
            return [*shown_problems, f"and {len(problems) - index} more problem(s)"]
        shown_problems.append(text)
        used += len(text) + 2
    return shown_problems


class VaultError(VaultK8sError, exit_code=3):
    """Vault is unreachable, sealed, refused the token, or answered unexpectedly."""


class PermissionDeniedError(VaultError):
    """Vault answered 403."""


class VaultRequestRefused(VaultError):
    """Vault processed the request and refused its content (400): the same request cannot succeed later."""


class CredentialError(VaultK8sError, exit_code=9):
    """The node holds nothing Vault would accept (certificate expired or refused, no enrolment secret_id)."""


class StoreError(VaultK8sError, exit_code=4):
    """The output directory cannot be read or written."""


class HsmError(VaultK8sError, exit_code=5):
    """The PKCS#11 module, token, PIN or key is not usable."""


class PlanRefused(VaultK8sError, exit_code=6):
    """The requested change is unsafe or out of order; nothing was changed."""


class DevServerError(VaultK8sError, exit_code=7):
    """The local dev OpenBao cannot be started, reached, unsealed or stopped."""


class CertificateRefused(VaultK8sError, exit_code=10):
    """The installed cryptography refuses a certificate that an earlier release read (kubeadm's serial 0)."""


class KubeError(VaultK8sError, exit_code=8):
    """The Kubernetes API server is unreachable or refused a request."""


class KubeConflict(KubeError):
    """The object changed since it was read (409): re-read it and decide again."""
