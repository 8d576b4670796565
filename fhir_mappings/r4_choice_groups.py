"""Build `schema/choice-groups.json`: which elements of each R4 JSON Schema definition form one choice element
(`deceasedBoolean` | `deceasedDateTime`), read from the fhir.resources R4B models.

The published schema does not say which properties belong to one `[x]` element, and names alone mislead
(`Encounter.reasonCode` and `reasonReference` are two elements). The R4B models know; importing them all takes
seconds, so the table is built once, committed, and checked by tests/unit/fhir_mappings/test_r4_schema.py.

    python -m fhir_mappings.r4_choice_groups   # rewrites fhir_mappings/schema/choice-groups.json
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

from pydantic import BaseModel

from fhir_mappings.r4_schema import CHOICES_FILE, published_definitions

SCHEMA_DIR = Path(__file__).with_name("schema")
GROUPS_FILE = SCHEMA_DIR / CHOICES_FILE


def _elements(model: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


def r4b_model_for(name: str, properties: set[str]) -> type[BaseModel] | None:
    """The R4B class of a schema definition: by name (`Encounter_Participant` -> EncounterParticipant), else the one
    class of the resource's module with exactly the same elements (`Bundle_Request` -> BundleEntryRequest)."""
    parts = name.split("_")
    try:
        module = importlib.import_module(f"fhir.resources.R4B.{parts[0].lower()}")
    except ImportError:
        return None
    found = getattr(module, "".join(parts), None)
    if inspect.isclass(found) and issubclass(found, BaseModel):
        return found
    same = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, BaseModel)
            and c.__module__ == module.__name__ and _elements(c) == properties]
    return same[0] if len(same) == 1 else None


def build() -> tuple[dict[str, dict[str, list[str]]], list[str]]:
    """(groups by definition, definitions with elements that no R4B class matched)."""
    groups: dict[str, dict[str, list[str]]] = {}
    unmatched: list[str] = []
    for name, definition in published_definitions().items():
        properties = {p for p in definition.get("properties", {}) if not p.startswith("_")}
        if not properties:
            continue
        model = r4b_model_for(name, properties)
        if model is None:
            unmatched.append(name)
            continue
        found: dict[str, list[str]] = {}
        for field_name, field in model.model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            element = field.alias or field_name
            if extra.get("one_of_many") and element in properties:  # R4B added a few types R4 lacks
                found.setdefault(str(extra["one_of_many"]), []).append(element)
        kept = {group: sorted(members) for group, members in sorted(found.items()) if len(members) > 1}
        if kept:
            groups[name] = kept
    return groups, unmatched


def main() -> None:
    groups, unmatched = build()
    GROUPS_FILE.write_text(json.dumps(groups, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{GROUPS_FILE}: {len(groups)} definitions with choice elements; {len(unmatched)} not matched to R4B")


if __name__ == "__main__":
    main()
