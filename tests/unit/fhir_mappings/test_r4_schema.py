"""The inbound R4 check (HL7's JSON Schema, tightened) is at least as strict as the fhir.resources R4B models.

The differential fuzz mutates every kind of element of real synthetic resources (wrong JSON types, nulls,
empty objects and arrays, bad formats, unknown properties, two values for one choice element) and asserts
that nothing the R4B models reject gets through the schema check.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import random
import re
from collections.abc import Iterator
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from fhir_mappings import r4_choice_groups, r4_schema
from fhir_mappings.r4_schema import check_resource
from prm.errors import ValidationError

ROOT = Path(__file__).resolve().parents[3]
SANDBOX = ROOT / "ehr_sandbox" / "data" / "sandbox"
INBOUND = ("Patient", "Encounter", "Appointment", "RelatedPerson", "Organization", "Location", "PractitionerRole")
MUTANTS: tuple[Any, ...] = (None, {}, [], "", "x", " lead", 0, -1, 1.5, True, {"a": 1}, [None], ["x"], "2020-13-01")


def r4b_model(resource_type: str) -> type[BaseModel]:
    model: type[BaseModel] = getattr(import_module(f"fhir.resources.R4B.{resource_type.lower()}"), resource_type)
    return model


def r4b_accepts(resource_type: str, resource: dict[str, Any]) -> bool:
    try:
        r4b_model(resource_type).model_validate(resource)
    except PydanticValidationError:
        return False
    return True


def schema_accepts(resource_type: str, resource: dict[str, Any]) -> bool:
    try:
        check_resource(resource_type, resource)
    except ValidationError:
        return False
    return True


def sample(resource_type: str, limit: int) -> list[dict[str, Any]]:
    lines = (SANDBOX / f"{resource_type}.ndjson").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:limit] if line.strip()]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def at(node: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        node = node[key]
    return node


def test_the_schema_is_hl7s_r4_file_unchanged() -> None:
    recorded = re.search(r"`([0-9a-f]{64})`", (ROOT / "fhir_mappings" / "schema" / "SOURCE.md").read_text())
    raw = gzip.decompress((ROOT / "fhir_mappings" / "schema" / r4_schema.SCHEMA_FILE).read_bytes())
    assert recorded and hashlib.sha256(raw).hexdigest() == recorded.group(1)
    assert json.loads(raw)["id"] == "http://hl7.org/fhir/json-schema/4.0"


@pytest.mark.parametrize("resource_type", INBOUND)
def test_every_synthetic_resource_passes(resource_type: str) -> None:
    for resource in sample(resource_type, 10_000):
        check_resource(resource_type, resource)


@pytest.mark.parametrize("resource_type", INBOUND)
def test_nothing_r4b_rejects_gets_through(resource_type: str) -> None:
    rnd = random.Random(f"r4-{resource_type}")
    rejected_by_both = tried = 0
    for resource in sample(resource_type, 40):
        places = [p for p in paths(resource) if p != ("resourceType",)]
        for _ in range(25):
            mutant = copy.deepcopy(resource)
            place = rnd.choice(places)
            roll = rnd.random()
            tried += 1
            if roll < 0.75:
                at(mutant, place[:-1])[place[-1]] = rnd.choice(MUTANTS)
            elif roll < 0.9 and isinstance(at(mutant, place[:-1]), dict):
                at(mutant, place[:-1])["notAnElement"] = "x"
            else:
                mutant["deceasedBoolean" if resource_type == "Patient" else "id"] = True
            if not r4b_accepts(resource_type, mutant):
                assert not schema_accepts(resource_type, mutant), (place, at(mutant, place[:-1]))
                rejected_by_both += 1
    assert rejected_by_both > tried / 2  # the fuzz really produced invalid resources


def test_the_choice_table_is_built_from_the_r4b_models_and_covers_what_we_read() -> None:
    groups, unmatched = r4_choice_groups.build()
    assert json.loads(r4_choice_groups.GROUPS_FILE.read_text(encoding="utf-8")) == groups, \
        "rebuild it: python -m fhir_mappings.r4_choice_groups"
    definitions = r4_choice_groups.published_definitions()
    resources = {n for n, d in definitions.items() if "resourceType" in d.get("properties", {})}
    ours = {*INBOUND, "Task", "Communication"}
    needed = [n for n in unmatched if n.split("_")[0] in ours or n.split("_")[0] not in resources]
    # every data type, and every backbone of a type we read, has its choice groups; R4B dropped SubstanceAmount
    # (used only by Substance* resources) and names the discriminator ElementDefinitionSlicingDiscriminator
    assert needed == ["SubstanceAmount", "SubstanceAmount_ReferenceRange", "ElementDefinition_Discriminator"]
    assert groups["Patient"] == {"deceased": ["deceasedBoolean", "deceasedDateTime"],
                                 "multipleBirth": ["multipleBirthBoolean", "multipleBirthInteger"]}
    assert "Encounter" not in groups  # reasonCode and reasonReference are two elements, not one choice


@pytest.mark.parametrize(("change", "where"), [
    ({"period": "yesterday"}, "period"),
    ({"period": {}}, "period"),
    ({"type": []}, "type"),
    ({"length": {"value": 1.5, "unit": "min"}, "priority": None}, "priority"),
    ({"status": "nonsense"}, "status"),
    ({"period": {"start": "2026-13-01"}}, "period.start"),
])
def test_the_tightened_rules_name_the_element(change: dict[str, Any], where: str) -> None:
    encounter = {**sample("Encounter", 1)[0], **change}
    with pytest.raises(ValidationError, match=rf"Encounter/\S+ is not a valid R4 Encounter: {re.escape(where)}: "):
        check_resource("Encounter", encounter)


def test_two_values_for_one_choice_and_bad_integers_are_refused() -> None:
    patient = sample("Patient", 1)[0]
    with pytest.raises(ValidationError, match="deceased"):
        check_resource("Patient", {**patient, "deceasedBoolean": False, "deceasedDateTime": "2020-01-01"})
    for rank in (0, -1, 1.5, "1"):
        bad = {**patient, "telecom": [{"system": "phone", "value": "0", "rank": rank}]}
        with pytest.raises(ValidationError, match=r"telecom\.0\.rank"):
            check_resource("Patient", bad)


SECRET = "Lovelace 1815-12-10 07700900123"  # what a patient's name, birth date or phone would look like


@pytest.mark.parametrize(("change", "where", "rule"), [
    ({"birthDate": SECRET}, "birthDate", "not a valid FHIR date"),
    ({"telecom": [{"system": "phone", "value": SECRET, "use": SECRET}]}, "telecom.0.use",
     "is not one of home, work, temp, old, mobile"),
    ({"name": [{"family": SECRET, "given": SECRET}]}, "name.0.given", "is not of type array"),
    ({"name": [{"family": SECRET, "nickname": SECRET}]}, "name.0", "has properties R4 does not define here: nickname"),
    ({"name": [{"family": SECRET}], "deceasedBoolean": False, "deceasedDateTime": "1815-12-10"}, "(resource)",
     "deceasedBoolean may not appear with another type of the same choice"),  # jsonschema quoted the whole resource
    ({"name": [{"family": SECRET}], "address": []}, "address", "is empty"),
    ({"name": [{"family": SECRET}], "telecom": [{"value": SECRET, "rank": -1}]}, "telecom.0.rank",
     "is less than the minimum of 1"),
    ({"gender": SECRET}, "gender", "is not one of male, female, other, unknown"),
])
def test_an_error_names_the_element_and_the_rule_never_the_value(change: dict[str, Any], where: str,
                                                                  rule: str) -> None:
    """Quarantine errors are kept and shown to IT on pages that are no patient view (nor audited as one)."""
    patient = {**sample("Patient", 1)[0], **change}
    with pytest.raises(ValidationError) as refused:
        check_resource("Patient", patient)
    message = str(refused.value)
    assert f"is not a valid R4 Patient: {where}: {rule}" in message
    assert not any(part in message for part in ("Lovelace", "1815", "07700", patient["birthDate"])), message


def test_wrong_or_unknown_types_are_refused() -> None:
    with pytest.raises(ValidationError, match="expected a Encounter, got 'Patient'"):
        check_resource("Encounter", sample("Patient", 1)[0])
    with pytest.raises(ValidationError, match="not an R4 resource type"):
        check_resource("Period", {"resourceType": "Period"})


def test_contained_resources_are_checked_against_their_own_type() -> None:
    organization = sample("Organization", 1)[0]
    patient = {**sample("Patient", 1)[0], "contained": [{**organization, "id": "org1"}]}
    check_resource("Patient", patient)
    patient["contained"] = [{**organization, "id": "org1", "partOf": "Organization/x"}]
    assert not r4b_accepts("Patient", patient)
    expected = r"contained\.0: Organization/org1 is not a valid R4 Organization: partOf"
    with pytest.raises(ValidationError, match=expected):
        check_resource("Patient", patient)
