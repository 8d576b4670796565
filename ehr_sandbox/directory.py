"""Reads the EHR's own FHIR server (internal URL, no token) for the shell's patient list and the standalone picker."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

MRN_CODE = "MR"


@dataclass(frozen=True)
class PatientRow:
    id: str
    name: str
    family: str
    birth_date: str
    mrn: str


def _name(resource: dict[str, Any]) -> tuple[str, str]:
    names = resource.get("name") or []
    best = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    family = best.get("family", "")
    given = " ".join(best.get("given", []))
    text = best.get("text") or " ".join(p for p in (given, family) if p)
    return text or resource.get("id", "?"), family


def _mrn(resource: dict[str, Any]) -> str:
    for ident in resource.get("identifier", []):
        codes = [c.get("code") for c in ident.get("type", {}).get("coding", [])]
        if MRN_CODE in codes:
            return str(ident.get("value", ""))
    return ""


def patient_row(resource: dict[str, Any]) -> PatientRow:
    name, family = _name(resource)
    return PatientRow(resource["id"], name, family, resource.get("birthDate", ""), _mrn(resource))


class Directory:
    def __init__(self, fhir_internal_url: str):
        self.base = fhir_internal_url.rstrip("/")

    def _get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        resp = requests.get(f"{self.base}/{path}", params=params, timeout=30,
                            headers={"Accept": "application/fhir+json"})
        return resp.json() if resp.status_code == 200 else None

    def patients(self, name: str | None = None, count: int = 50) -> list[PatientRow]:
        params = {"_count": str(count), "_sort": "family"}
        if name:
            params["name"] = name
        bundle = self._get("Patient", params) or {}
        rows = [patient_row(e["resource"]) for e in bundle.get("entry", []) if "resource" in e]
        return sorted(rows, key=lambda r: (r.family.casefold(), r.name.casefold()))

    def patient(self, patient_id: str) -> PatientRow | None:
        found = self._get(f"Patient/{patient_id}")
        return patient_row(found) if found else None

    def latest_encounter(self, patient_id: str) -> str | None:
        bundle = self._get("Encounter", {"patient": patient_id, "_sort": "-date", "_count": "1"}) or {}
        entries = bundle.get("entry", [])
        return str(entries[0]["resource"]["id"]) if entries else None
