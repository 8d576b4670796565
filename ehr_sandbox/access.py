"""Which FHIR interaction a request is and whether a token's SMART scopes (and the profile) allow it."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .profiles import Profile
from .scopes import ClinicalScope, allowing, parse_all

# R4 types with a `patient` search parameter on the sandbox FHIR server
COMPARTMENT_TYPES = frozenset({
    "RelatedPerson", "Encounter", "EpisodeOfCare", "ServiceRequest", "Task", "Specimen", "Observation",
    "DiagnosticReport", "ImagingStudy", "Media", "DocumentReference", "Appointment", "AppointmentResponse",
    "MedicationRequest", "MedicationDispense", "MedicationAdministration", "MedicationStatement", "Condition",
    "AllergyIntolerance", "Procedure", "Immunization", "CarePlan", "Communication", "CommunicationRequest",
    "Coverage", "CoverageEligibilityRequest", "CoverageEligibilityResponse", "Account", "ChargeItem", "Claim",
    "ClaimResponse", "ExplanationOfBenefit", "Invoice", "Provenance", "AuditEvent", "Flag", "Consent", "Device"})
PATIENT_PARAMS = ("patient", "subject", "patient:Patient", "subject:Patient")
METHOD_PERM = {"GET": "r", "HEAD": "r", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}
PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


class Denied(Exception):
    """The request is refused: status and OperationOutcome issue code for the answer."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Interaction:
    """kind: read | search | create | update | delete | transaction | export | bulk | history-system | operation."""

    kind: str
    rtype: str | None = None
    rid: str | None = None
    perm: str = "r"
    compartment: tuple[str, str] | None = None  # Patient/<id>/<Type> searches
    extra_params: list[tuple[str, str]] = field(default_factory=list)  # added by the patient restriction
    check_result_patient: str | None = None  # a read whose result must concern this patient


def classify(method: str, path: str) -> Interaction:
    parts = [p for p in path.split("/") if p]
    perm = METHOD_PERM.get(method, "r")
    if not parts:
        return Interaction("transaction" if method == "POST" else "operation", perm=perm)
    head = parts[0]
    if head == "$export":
        return Interaction("export")
    if head.startswith("$"):
        return Interaction("operation", perm=perm)
    if head == "_history":
        return Interaction("history-system")
    if head in ("bulk-status", "bulk-files"):
        return Interaction("bulk")
    if len(parts) == 1:
        kind = {"GET": "search", "HEAD": "search", "POST": "create", "DELETE": "delete"}.get(method, "update")
        return Interaction(kind, head, perm="s" if kind == "search" else perm)
    second = parts[1]
    if second == "_search":
        return Interaction("search", head, perm="s")
    if second == "_history":
        return Interaction("search", head, perm="s")
    if second == "$export":
        return Interaction("export", head)
    if second.startswith("$"):
        return Interaction("operation", head, perm="r" if method in ("GET", "HEAD") else "c")
    if len(parts) == 2:
        kind = {"GET": "read", "HEAD": "read", "PUT": "update", "PATCH": "update", "DELETE": "delete"}.get(
            method, "operation")
        return Interaction(kind, head, second, perm=perm)
    third = parts[2]
    if third == "$export":
        return Interaction("export", head, second)
    if third == "_history" or third.startswith("$"):
        return Interaction("read" if method in ("GET", "HEAD") else "operation", head, second,
                           perm="r" if method in ("GET", "HEAD") else "c")
    return Interaction("search", third, perm="s", compartment=(head, second))


def _ref_id(value: str) -> str:
    m = PATIENT_REF.search(value)
    return m.group(1) if m else value


def patient_refs(resource: Any) -> set[str]:
    """Ids of every Patient a resource references (relative or absolute references)."""
    found: set[str] = set()
    stack = [resource]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str) and PATIENT_REF.search(ref):
                found.add(_ref_id(ref))
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def check(scope: str, patient: str | None, profile: Profile, inter: Interaction,
          args: list[tuple[str, str]], body: bytes) -> Interaction:
    """Raises Denied, or returns the interaction with the restrictions the proxy must apply."""
    scopes = parse_all(scope)
    if inter.kind in ("export", "bulk") and not profile.export_levels:
        raise Denied(404, "not-supported", "Bulk Data $export is not supported by this EHR")
    if inter.kind == "export" and _export_level(inter) not in profile.export_levels:
        raise Denied(404, "not-supported", f"$export is offered at {', '.join(sorted(profile.export_levels))} "
                                           f"level only")
    system_level = inter.kind in ("export", "bulk", "history-system") or (
        inter.kind in ("transaction", "operation") and inter.rtype is None)
    if system_level:
        _need_system(scopes, inter)
        if inter.kind == "transaction":
            _check_bundle(scopes, profile, body)
        return inter
    if inter.rtype is None:
        raise Denied(400, "not-supported", f"{inter.kind} needs a resource type")
    if inter.perm in ("c", "u") and inter.rtype in profile.refused_writes:
        raise Denied(403, "forbidden", f"this EHR does not accept writes of {inter.rtype}")
    names = {k for k, _ in args}
    if profile.patient_scoped_searches_only and inter.kind == "search" and inter.compartment is None:
        if inter.rtype in COMPARTMENT_TYPES and not names & set(PATIENT_PARAMS):
            raise Denied(403, "forbidden", f"{inter.rtype} searches must name a patient (patient= or subject=)")
        if inter.rtype == "Patient" and not names & {"_id", "identifier"}:
            raise Denied(403, "forbidden", "Patient searches must give _id or identifier")
    if profile.patient_lists == "refused" and inter.kind == "search" and inter.rtype in COMPARTMENT_TYPES and any(
            k in PATIENT_PARAMS and "," in v for k, v in args):
        raise Denied(400, "not-supported", "a search names one patient (patient= takes a single id)")
    contexts = allowing(scopes, inter.rtype, inter.perm)
    if not contexts:
        raise Denied(403, "forbidden", f"no granted scope allows {inter.kind} ({inter.perm}) on {inter.rtype}")
    if contexts & {"user", "system"}:
        return inter
    return _restrict_to_patient(patient, inter, args, body)


def _export_level(inter: Interaction) -> str:
    return {"Group": "group", "Patient": "patient"}.get(inter.rtype or "", "system")


def _need_system(scopes: list[ClinicalScope], inter: Interaction) -> None:
    system = [s for s in scopes if s.context == "system"]
    if inter.kind == "history-system" and not any(s.covers("*", "r") for s in system):
        raise Denied(403, "forbidden", "system-level _history needs system/*.read (or .rs)")
    if inter.kind in ("export", "bulk") and not any(s.perms & {"r", "s"} for s in system):
        raise Denied(403, "forbidden", "$export needs system/ read scopes")
    if not system:
        raise Denied(403, "forbidden", f"{inter.kind} at the system level needs system/ scopes")


def _check_bundle(scopes: list[ClinicalScope], profile: Profile, body: bytes) -> None:
    try:
        bundle = json.loads(body or b"{}")
    except ValueError as exc:
        raise Denied(400, "invalid", "the Bundle is not JSON") from exc
    system = [s for s in scopes if s.context == "system"]
    for entry in bundle.get("entry", []) if isinstance(bundle, dict) else []:
        req = entry.get("request", {})
        method = str(req.get("method", "GET")).upper()
        rtype = str(req.get("url", "")).split("?")[0].split("/")[0]
        perm = {"GET": "r", "POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}.get(method, "r")
        if perm in ("c", "u") and rtype in profile.refused_writes:
            raise Denied(403, "forbidden", f"this EHR does not accept writes of {rtype}")
        if not any(s.covers(rtype, perm) for s in system):
            raise Denied(403, "forbidden", f"bundle entry {method} {rtype}: no system/ scope allows it")


def _restrict_to_patient(patient: str | None, inter: Interaction, args: list[tuple[str, str]],
                         body: bytes) -> Interaction:
    """patient/ scopes: only the launch patient's data (Patient itself, compartment searches, reads, writes)."""
    if not patient:
        raise Denied(403, "forbidden", "patient/ scopes without a patient in context")
    rtype = inter.rtype
    if inter.compartment is not None:
        if inter.compartment != ("Patient", patient):
            raise Denied(403, "forbidden", "patient/ scopes only reach the launch patient's compartment")
        return inter
    if inter.kind == "search":
        if rtype == "Patient":
            ids = [v for k, v in args if k == "_id"]
            if any(set(v.split(",")) - {patient} for v in ids):
                raise Denied(403, "forbidden", "patient/ scopes only reach the launch patient")
            inter.extra_params.append(("_id", patient))
        elif rtype in COMPARTMENT_TYPES:
            given = [v for k, v in args if k in PATIENT_PARAMS]
            if any({_ref_id(x) for x in v.split(",")} - {patient} for v in given):
                raise Denied(403, "forbidden", "patient/ scopes only reach the launch patient")
            if not given:
                inter.extra_params.append(("patient", patient))
        return inter
    if rtype == "Patient":
        if inter.kind == "create" or (inter.rid and inter.rid != patient):
            raise Denied(403, "forbidden", "patient/ scopes only reach the launch patient")
        return inter
    if inter.kind in ("read", "operation") and rtype in COMPARTMENT_TYPES:
        inter.check_result_patient = patient
    if inter.kind in ("create", "update") and body:
        try:
            refs = patient_refs(json.loads(body))
        except ValueError:
            refs = set()
        if refs and patient not in refs:
            raise Denied(403, "forbidden", "patient/ scopes only allow writes about the launch patient")
    return inter
