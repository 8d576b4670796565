"""What a page sets aside for quarantine, and the words it keeps with it: where and why, never the value."""

from __future__ import annotations

import json
from pathlib import Path

from workers.page_prep import prepare_page, quarantine_reason

SANDBOX = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"


def first(resource_type: str) -> dict:  # type: ignore[type-arg]
    with (SANDBOX / f"{resource_type}.ndjson").open() as lines:
        return json.loads(next(lines))  # type: ignore[no-any-return]


def test_a_resource_the_mapping_cannot_read_is_set_aside_and_the_rest_kept() -> None:
    """FHIR allows a year-month dateTime; the PRM cannot place a visit by it, so IT sees it, not a guess."""
    month_only = {**first("Encounter"), "period": {"start": "1815-12"}}
    other = {**first("Encounter"), "id": "enc-other"}
    page = prepare_page("Encounter", [month_only, other])
    assert [row["fhir_id"] for row in page.rows] == ["enc-other"]
    [(payload, error)] = page.bad
    assert payload is month_only
    assert error == "ValueError: a dateTime of a year or a month alone is not a point in time the PRM can place"


def test_an_invalid_resource_keeps_the_rule_it_broke_not_the_value() -> None:
    patient = {**first("Patient"), "birthDate": "in the winter of 1815"}
    [(_, error)] = prepare_page("Patient", [patient]).bad
    assert error == (f"ValidationError: Patient/{patient['id']} is not a valid R4 Patient: "
                     "birthDate: not a valid FHIR date")


def test_quoted_parts_of_a_mappers_value_error_are_left_out() -> None:
    assert quarantine_reason(ValueError("invalid literal for int() with base 10: 'Lovelace'")) == \
        "ValueError: invalid literal for int() with base 10: '…'"
    assert quarantine_reason(ValueError('Invalid isoformat string: "1815-12-10T25:00"')) == \
        "ValueError: Invalid isoformat string: '…'"
    assert quarantine_reason(KeyError("reference")) == "KeyError: 'reference'", "an element name, not a value"
