"""Scope rewriting for v1-only EHRs and standalone launches."""

from __future__ import annotations

from connector.oauth import standalone_scopes
from prm.connections import DEFAULT_USER_SCOPES
from prm.smart_scopes import to_v1 as v1_scopes


def test_v2_scopes_become_their_v1_equivalents() -> None:
    assert v1_scopes(DEFAULT_USER_SCOPES) == (
        "launch openid fhirUser online_access patient/Patient.read patient/RelatedPerson.read "
        "patient/Encounter.read patient/Appointment.read patient/Communication.read patient/Communication.write "
        "patient/Task.read patient/Task.write"
    )
    assert v1_scopes("system/Task.cu patient/*.read user/Observation.rs?category=vital-signs") == (
        "system/Task.write patient/*.read user/Observation.read"
    )


def test_standalone_asks_for_a_patient_instead_of_the_ehr_context() -> None:
    assert standalone_scopes("launch openid patient/Patient.rs") == "openid patient/Patient.rs launch/patient"
