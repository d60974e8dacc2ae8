"""The phases of the two rotations, in order. Their own module so the CLI offers them as choices
without loading the planners (and cryptography) at start-up."""

from __future__ import annotations

from enum import Enum


class CARotationPhase(str, Enum):
    """The steps of `vaultk8s ca rotate --phase`; plan/ca_rotation.plan_rotation plans one."""

    STAGE = "stage"
    SWITCH = "switch"
    RETIRE = "retire"


class SARotationPhase(str, Enum):
    """The steps of `vaultk8s sa rotate --phase`; plan/sa.apply_phase runs one."""

    STAGE = "stage"
    PROMOTE = "promote"
    RETIRE = "retire"
