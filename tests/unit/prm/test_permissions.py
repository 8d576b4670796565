"""The permission table: roles come from the connection's mapping; an action a role lacks is denied."""

from __future__ import annotations

import pytest

from prm.errors import PermissionDenied, ValidationError
from prm.permissions import PERMISSIONS, Action, Role, allows, require, role_for_user


def test_every_role_has_a_row() -> None:
    assert set(PERMISSIONS) == set(Role)


def test_clinician_may_view_patients_but_not_manage_connections() -> None:
    assert allows(Role.CLINICIAN, Action.VIEW_PATIENT)
    with pytest.raises(PermissionDenied) as caught:
        require(Role.CLINICIAN, Action.MANAGE_CONNECTIONS)
    assert caught.value.action == "connection.manage"
    require(Role.IT_ADMIN, Action.MANAGE_CONNECTIONS)


@pytest.mark.parametrize(
    ("fhir_user", "expected"),
    [
        ("https://ehr.example/fhir/Practitioner/prac-rdc-01", Role.IT_ADMIN),
        ("Practitioner/prac-rdc-02", Role.CLINICIAN),
        ("PractitionerRole/role-9", Role.FRONT_DESK),
        ("Patient/pat-000001", Role.FRONT_DESK),
        (None, Role.FRONT_DESK),
    ],
)
def test_role_mapping_most_specific_first(fhir_user: str | None, expected: Role) -> None:
    mapping = {"Practitioner/prac-rdc-01": "it_admin", "Practitioner": "clinician"}
    assert role_for_user(fhir_user, mapping, "front_desk") == expected


def test_unknown_role_in_mapping_is_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown role"):
        role_for_user("Practitioner/x", {"Practitioner": "surgeon"}, "clinician")
