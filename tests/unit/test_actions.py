import dataclasses

from vaultk8s.plan.actions import Action


def test_to_dict_has_every_field():
    action = Action("write-role", "pki/roles/x", "new role")
    assert action.to_dict() == dataclasses.asdict(action)
