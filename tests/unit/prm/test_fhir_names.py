"""FHIR ids, type names and references, as every layer checks them (prm.fhir_names)."""

from __future__ import annotations

import pytest

from prm.care_tickets import check_fhir_id, check_reference
from prm.errors import ValidationError
from prm.fhir_names import is_id, is_reference, is_type, version_of


@pytest.mark.parametrize("value", ["pat-000001", "a.b-C9", "x" * 64])
def test_ids_of_the_r4_id_type_pass(value: str) -> None:
    assert is_id(value)


@pytest.mark.parametrize("value", ["", "x" * 65, "pat_1", "pat 1", "../Patient", "pat-1\n", "pat/1"])
def test_anything_else_is_not_an_id(value: str) -> None:
    """A trailing newline included: `re.match` with `$` let it through, into URLs and references."""
    assert not is_id(value)


def test_type_names_and_references() -> None:
    assert is_type("Patient") and not is_type("patient") and not is_type("Patient\n")
    assert is_reference("Organization/org-1") and is_reference("Organization/org-1", ("Organization",))
    assert not is_reference("Patient/pat-1", ("Organization",))
    assert not is_reference("Organization/org-1\n") and not is_reference("Organization/")


def test_a_care_ticket_owner_with_a_trailing_newline_is_refused() -> None:
    """It reached the ticket, and the Task written back to the EHR, before the checks matched whole values."""
    assert check_reference("PractitionerRole/prr-1", "owner") == "PractitionerRole/prr-1"
    with pytest.raises(ValidationError, match="owner must be a FHIR reference"):
        check_reference("PractitionerRole/prr-1\n", "owner")
    with pytest.raises(ValidationError, match="patient must be a FHIR id"):
        check_fhir_id("pat-000001\n", "patient")


def test_version_of_reads_meta_version_id_as_text() -> None:
    assert version_of({"meta": {"versionId": "3"}}) == "3"
    assert version_of({"meta": {"versionId": 4}}) == "4"  # a few servers send a number
    assert [version_of(r) for r in ({}, {"meta": None}, {"meta": "3"}, {"meta": {"versionId": True}},
                                    {"meta": {"versionId": ["3"]}})] == [None] * 5
