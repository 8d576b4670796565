"""Patient words the PRM uses, independent of FHIR (mappers in fhir_mappings build them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PatientHeader:
    """What the sidebar's banner needs to greet the right person: no more."""

    fhir_id: str
    display_name: str
    birth_date: str | None  # FHIR precision kept: YYYY, YYYY-MM or YYYY-MM-DD
    gender: str | None
    deceased: bool = False
