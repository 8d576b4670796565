"""The inbound check at the edge: HL7's own FHIR R4 JSON Schema, tightened where it is looser than the FHIR
rules, compiled once per resource type by jsonschema-rs.

Why not the fhir.resources R4B models here: they cost 0.3–0.6 ms per resource (a third of it in fhir_core's
null-element pass), which made checking the largest share of a first sync. This check costs ~15 µs and
rejects everything the R4B models reject (tests/unit/test_r4_schema.py proves it with a differential fuzz over
the synthetic data set), and also what FHIR JSON forbids but the models let through: nulls, empty objects and
arrays, codes outside a required binding. Outbound resources are still built and checked with the R4B models.

The published schema is loose in four places, which `tighten` mends:
- complex types and resources have no `"type": "object"`, so a string passes where a Period belongs;
- integer, positiveInt and unsignedInt are `"type": "number"` with a pattern, which JSON Schema ignores for
  numbers, so 1.5, 0 and -1 pass;
- FHIR JSON objects and arrays are never empty, which the schema does not say;
- a choice element (`deceased[x]`) may carry one type only, which the schema does not say (the groups come
  from schema/choice-groups.json, built from the R4B models).
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Collection
from functools import cache
from importlib import resources
from typing import Any

import jsonschema_rs

from prm.errors import ValidationError

SCHEMA_FILE = "fhir.schema.json.gz"  # HL7 FHIR R4 fhir.schema.json, see schema/SOURCE.md
CHOICES_FILE = "choice-groups.json"  # built from the R4B models by fhir_mappings/r4_choice_groups.py
_INTEGERS: dict[str, dict[str, Any]] = {"integer": {"type": "integer"},
                                        "positiveInt": {"type": "integer", "minimum": 1},
                                        "unsignedInt": {"type": "integer", "minimum": 0}}
_compile_lock = threading.Lock()


def published_definitions() -> dict[str, Any]:
    """The definitions of HL7's schema file as published (also what r4_choice_groups builds its table from)."""
    raw = resources.files("fhir_mappings").joinpath("schema", SCHEMA_FILE).read_bytes()
    definitions: dict[str, Any] = json.loads(gzip.decompress(raw))["definitions"]
    return definitions


@cache
def _definitions() -> dict[str, Any]:
    choices_text = resources.files("fhir_mappings").joinpath("schema", CHOICES_FILE).read_text(encoding="utf-8")
    choices: dict[str, dict[str, list[str]]] = json.loads(choices_text)
    return tighten(published_definitions(), choices)


def tighten(definitions: dict[str, Any], choices: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    """The published definitions with the four mends above (descriptions dropped: they are not rules).
    `choices` is schema/choice-groups.json: the choice elements of each definition, from the R4B models."""
    out: dict[str, Any] = {}
    for name, definition in definitions.items():
        if name in _INTEGERS:
            out[name] = dict(_INTEGERS[name])
            continue
        rule = {key: value for key, value in definition.items() if key != "description"}
        properties = rule.get("properties")
        if properties is not None:
            rule["type"], rule["minProperties"] = "object", 1
            rule["properties"] = {key: _element(value) for key, value in properties.items()}
            exclusive = _one_of_each_choice(choices.get(name, {}))
            if exclusive:
                rule["dependencies"] = exclusive
        out[name] = rule
    return out


def _element(rule: dict[str, Any]) -> dict[str, Any]:
    element = {key: value for key, value in rule.items() if key != "description"}
    if element.get("type") == "array":
        element["minItems"] = 1
    return element


def _one_of_each_choice(groups: dict[str, list[str]]) -> dict[str, Any]:
    """`deceasedBoolean` present -> no other `deceased*` choice present (and so on for every choice group)."""
    rules: dict[str, Any] = {}
    for members in groups.values():
        for member in members:
            rules[member] = {"not": {"anyOf": [{"required": [other]} for other in members if other != member]}}
    return rules


_validators: dict[str, jsonschema_rs.Draft6Validator] = {}
_REF = re.compile(r'"\$ref": "#/definitions/([A-Za-z0-9_]+)"')
# A contained resource is checked on its own, against its own type (check_resource recurses), so a type's
# validator holds only the definitions that type reaches: ~60 instead of 680, compiled in milliseconds.
_CONTAINED = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}


def _reachable(definitions: dict[str, Any], start: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found[name] = _CONTAINED if name == "ResourceList" else definitions[name]
        todo += _REF.findall(json.dumps(found[name]))
    return found


def _validator(resource_type: str) -> jsonschema_rs.Draft6Validator:
    """Compiled on first use, once per process even when the drain's threads ask at once."""
    found = _validators.get(resource_type)
    if found is not None:
        return found
    with _compile_lock:
        found = _validators.get(resource_type)
        if found is None:
            definitions = _definitions()
            if "resourceType" not in definitions.get(resource_type, {}).get("properties", {}):
                raise ValidationError(f"not an R4 resource type: {resource_type!r}")
            found = _validators[resource_type] = jsonschema_rs.Draft6Validator(
                {"$schema": "http://json-schema.org/draft-06/schema#",
                 "definitions": _reachable(definitions, resource_type), "$ref": f"#/definitions/{resource_type}"})
        return found


def prepare(resource_types: Collection[str]) -> None:
    """Compile the validators ahead (a sync does this while it waits for an export)."""
    for resource_type in resource_types:
        _validator(resource_type)


def check_resource(resource_type: str, resource: dict[str, Any]) -> None:
    """Raise ValidationError naming the first problem if `resource` is not a valid R4 `resource_type`
    (contained resources included, each against its own type)."""
    if not isinstance(resource, dict) or resource.get("resourceType") != resource_type:
        got = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        raise ValidationError(f"expected a {resource_type}, got {got!r}")
    validator = _validator(resource_type)
    label = f"{resource_type}/{resource.get('id')}"
    if not validator.is_valid(resource):
        first = next(iter(validator.iter_errors(resource)))
        where = ".".join(str(part) for part in first.instance_path) or "(resource)"
        raise ValidationError(f"{label} is not a valid R4 {resource_type}: {where}: {rule_broken(first)}")
    for index, inner in enumerate(resource.get("contained", ())):
        try:
            check_resource(str(inner["resourceType"]), inner)
        except ValidationError as exc:
            raise ValidationError(f"{label} contained.{index}: {exc}") from exc


_LIMITS = {"minItems": "fewer than {} items", "maxItems": "more than {} items", "minLength": "shorter than {}",
           "maxLength": "longer than {}", "minimum": "less than the minimum of {}",
           "maximum": "more than the maximum of {}", "minProperties": "fewer than {} properties",
           "maxProperties": "more than {} properties"}


def rule_broken(error: jsonschema_rs.ValidationError) -> str:
    """What the element breaks, in the schema's words only, never the value found there.

    Why: jsonschema's own messages quote the value (a birth date, a phone number, for a choice element the whole
    resource), and this text is kept with a quarantined resource and shown to IT on pages that are not a view
    of a patient (so not audited as one). The path (`where`) and the rule tell IT what to take up with the EHR;
    the resource itself is one search away there. Property names are the resource's keys, not its values."""
    kind = error.kind
    name, facts = kind.name, kind.as_dict()
    path = list(error.schema_path)
    if name == "pattern":
        defined = path[-2] if len(path) >= 3 and path[-3] == "definitions" else None
        return f"not a valid FHIR {defined}" if defined else f"does not match {facts['pattern']}"
    if name == "enum":
        return "is not one of " + ", ".join(str(option) for option in facts["options"])
    if name == "type":
        return "is not of type " + " or ".join(str(t) for t in facts["types"])
    if name == "required":
        return f"lacks the required {facts['property']}"
    if name == "additionalProperties":
        return "has properties R4 does not define here: " + ", ".join(str(p)[:40] for p in facts["unexpected"][:5])
    if name == "not" and "dependencies" in path:  # a choice element given in two types (see _one_of_each_choice)
        return f"{path[-2]} may not appear with another type of the same choice"
    if name in ("minItems", "minProperties") and facts["limit"] == 1:
        return "is empty (FHIR JSON has no empty arrays or objects)"
    if name in _LIMITS:
        return "is " + _LIMITS[name].format(facts["limit"])
    if name in ("anyOf", "oneOfNotValid"):
        return "matches none of the forms allowed here"
    if name == "falseSchema":
        return "is not allowed here"
    return f"breaks the rule at {'/'.join(str(part) for part in path)}"
