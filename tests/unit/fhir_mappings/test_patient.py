"""Patient -> PatientHeader against the data set's known facts and edge cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_mappings.patient import patient_header_from_fhir
from prm.errors import ValidationError

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"


def patients() -> dict[str, dict[str, Any]]:
    with (DATA / "Patient.ndjson").open(encoding="utf-8") as lines:
        return {r["id"]: r for r in map(json.loads, lines)}


def test_every_patient_in_the_data_set_maps() -> None:
    headers = [patient_header_from_fhir(r) for r in patients().values()]
    assert len(headers) == 300
    assert all(h.display_name and h.display_name != "(no name recorded)" for h in headers)


def test_known_facts() -> None:
    header = patient_header_from_fhir(patients()["pat-000001"])
    assert (header.fhir_id, header.display_name, header.birth_date, header.gender) == (
        "pat-000001", "Oliver Bennett", "1980-03-16", "male")


def test_native_script_names_do_not_win_over_the_latin_one() -> None:
    data = patients()
    with_ideographic = [
        r for r in data.values()
        if any("iso21090-EN-representation" in e.get("url", "") for n in r.get("name", [])
               for e in n.get("extension", []))
    ]
    assert with_ideographic, "the data set has patients with ideographic/syllabic names"
    for resource in with_ideographic:
        native = [n for n in resource["name"]
                  if any("iso21090-EN-representation" in e.get("url", "") for e in n.get("extension", []))]
        shown = patient_header_from_fhir(resource).display_name
        assert all(n.get("family", "") not in shown for n in native), (resource["id"], shown)


def test_deceased_patients_are_marked() -> None:
    deceased = [r for r in patients().values() if r.get("deceasedBoolean") or r.get("deceasedDateTime")]
    assert deceased and all(patient_header_from_fhir(r).deceased for r in deceased)


def test_invalid_patients_are_refused_with_the_path() -> None:
    broken = dict(patients()["pat-000001"], birthDate="20th of March")
    with pytest.raises(ValidationError, match="birthDate"):
        patient_header_from_fhir(broken)
    with pytest.raises(ValidationError, match="expected a Patient"):
        patient_header_from_fhir({"resourceType": "Encounter", "id": "x"})
