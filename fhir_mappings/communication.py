"""OutreachMessage -> FHIR R4 Communication (pure), plus the outbound pieces every write-back mapper shares.

R4B validation checks structure and formats only: it accepts any code, any reference text and any target type.
So the code tables and reference checks live here, and an EHR never sees a resource we could have refused.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B import communication as fhir_communication
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from fhir_mappings.common import instant, ref_id
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import ValidationError
from prm.followup_models import OutreachMessage

PURPOSE_SYSTEM = "https://fhir-prm.org/fhir/CodeSystem/outreach-purpose"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/communication-category"
MEDIUM_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
NOT_DONE_SYSTEM = "http://terminology.hl7.org/CodeSystem/communication-not-done-reason"

# SMSWRIT joined THO's ParticipationMode after the copy printed in R4 core; the system URI is the same and the
# binding is example strength, so an R4 server accepts it (it is where SMS belongs: WRITTEN, not ELECTRONIC).
MEDIUM = {"sms": ("SMSWRIT", "SMS message"), "email": ("EMAILWRIT", "email"), "phone": ("PHONE", "telephone"),
          "letter": ("MAILWRIT", "mail"), "portal": ("ONLINEWRIT", "online written"),
          "in-person": ("FACE", "face-to-face")}
CATEGORY = {"reminder": "reminder", "recall": "reminder", "follow-up": "notification",
            "feedback-invite": "notification", "feedback-reply": "notification", "check-in": "notification",
            "thank-you": "notification"}
CATEGORY_DISPLAY = {"reminder": "Reminder", "notification": "Notification"}
PURPOSE_DISPLAY = {"reminder": "Appointment reminder", "recall": "Recall", "follow-up": "Follow-up",
                   "feedback-invite": "Feedback invitation", "feedback-reply": "Reply to feedback",
                   "check-in": "Check-in", "thank-you": "Thank-you"}
# Only a status_reason that is literally one of these codes gets a coding; any other reason stays text.
NOT_DONE_DISPLAY = {"unknown": "Unknown", "system-error": "System Error",
                    "invalid-phone-number": "Invalid Phone Number", "recipient-unavailable": "Recipient Unavailable",
                    "family-objection": "Family Objection", "patient-objection": "Patient Objection"}
MESSAGE_STATUS = {"sent": "completed", "failed": "not-done"}

# R4 target types, so a bad reference fails here rather than as a 422 from the EHR in a worker at 3 a.m.
RECIPIENT_TYPES = frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole",
                             "RelatedPerson", "Group", "CareTeam", "HealthcareService"})
SENDER_TYPES = frozenset({"Device", "Organization", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson",
                          "HealthcareService"})
_REFERENCE = re.compile(r"(?P<type>[A-Z][A-Za-z]{1,63})/(?P<id>[A-Za-z0-9\-.]{1,64})")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def fhir_instant(value: datetime | None, what: str) -> str:
    """ISO-8601 in UTC with an explicit +00:00; a naive datetime is a bug upstream, never guessed at here."""
    if value is None:
        raise ValidationError(f"{what} is missing")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(f"{what} is a naive datetime; fhir-prm keeps aware UTC times")
    return value.astimezone(UTC).isoformat()


def reference(value: str, what: str, allowed: frozenset[str] | None = None) -> dict[str, str]:
    """A relative `Type/id` reference, checked for shape and (where R4 restricts it) target type."""
    match = _REFERENCE.fullmatch(value or "")
    if match is None:
        raise ValidationError(f"{what} {value!r} is not a Type/id reference")
    if allowed is not None and match["type"] not in allowed:
        raise ValidationError(f"{what} {value!r}: R4 allows only {', '.join(sorted(allowed))} here")
    return {"reference": value}


def typed_reference(resource_type: str, fhir_id: str | None, what: str) -> dict[str, str]:
    if not fhir_id or _ID.fullmatch(fhir_id) is None:
        raise ValidationError(f"{what} {fhir_id!r} is not a FHIR id")
    return {"reference": f"{resource_type}/{fhir_id}"}


def coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def business_identifier(key: str) -> list[dict[str, str]]:
    if not key:
        raise ValidationError("business_key is missing: every resource we write carries one (exactly-once)")
    return [{"system": IDENTIFIER_SYSTEM, "value": key}]


def checked(model: type[BaseModel], resource: dict[str, Any], what: str) -> dict[str, Any]:
    """The resource itself (our ISO offsets intact), once the R4B model accepts it."""
    try:
        model.model_validate(resource)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValidationError(f"{what} is not a valid R4 {model.__name__}: {where}: {first.get('msg')}") from exc
    return resource


def code_in(concepts: list[dict[str, Any]] | dict[str, Any] | None, system: str) -> str | None:
    """The first code from `system` among one or more CodeableConcepts."""
    items = concepts if isinstance(concepts, list) else [concepts or {}]
    return next((c.get("code") for cc in items for c in cc.get("coding", []) if c.get("system") == system), None)


def our_key(resource: dict[str, Any]) -> str | None:
    return next((i.get("value") for i in resource.get("identifier", []) if i.get("system") == IDENTIFIER_SYSTEM),
                None)


def outreach_message_to_communication(message: OutreachMessage) -> dict[str, Any]:
    """Only messages that reached an outcome are written: the EHR's record is of contact made (or attempted)."""
    what = f"outreach message {message.business_key!r}"
    status = MESSAGE_STATUS.get(message.status)
    if status is None:
        raise ValidationError(f"{what} is {message.status!r}: only sent or failed messages are written")
    if message.channel not in MEDIUM:
        raise ValidationError(f"{what} has unknown channel {message.channel!r}")
    if message.purpose not in CATEGORY:
        raise ValidationError(f"{what} has unknown purpose {message.purpose!r}")
    medium, medium_display = MEDIUM[message.channel]
    category = CATEGORY[message.purpose]
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": business_identifier(message.business_key),
        "status": status,
        "category": [coded(CATEGORY_SYSTEM, category, CATEGORY_DISPLAY[category])],
        "medium": [coded(MEDIUM_SYSTEM, medium, medium_display)],
        "subject": typed_reference("Patient", message.patient_id, f"{what} patient"),
        "recipient": [reference(message.recipient, f"{what} recipient", RECIPIENT_TYPES) if message.recipient
                      else typed_reference("Patient", message.patient_id, f"{what} patient")],
        "payload": [{"contentString": message.text}],
        "reasonCode": [coded(PURPOSE_SYSTEM, message.purpose, PURPOSE_DISPLAY[message.purpose])],
    }
    if status == "not-done":
        reason = message.status_reason or "not sent"
        resource["statusReason"] = {"text": reason}
        if reason in NOT_DONE_DISPLAY:
            resource["statusReason"]["coding"] = [
                {"system": NOT_DONE_SYSTEM, "code": reason, "display": NOT_DONE_DISPLAY[reason]}]
    else:
        resource["sent"] = fhir_instant(message.sent_at, f"{what} sent_at")
    if message.encounter_id:
        resource["encounter"] = typed_reference("Encounter", message.encounter_id, f"{what} encounter")
    if message.based_on:
        resource["basedOn"] = [reference(message.based_on, f"{what} based_on")]
    if message.sender:
        resource["sender"] = reference(message.sender, f"{what} sender", SENDER_TYPES)
    return checked(fhir_communication.Communication, resource, what)


def outreach_fields_from_communication(resource: dict[str, Any]) -> dict[str, Any]:
    """The message fields a Communication we wrote carries back, so round-trip tests can compare like with like."""
    checked(fhir_communication.Communication, resource, "Communication")
    channels = {code: channel for channel, (code, _) in MEDIUM.items()}
    sent_at, _ = instant(resource.get("sent"))
    recipients = resource.get("recipient") or [{}]
    return {
        "business_key": our_key(resource),
        "status": {fhir: ours for ours, fhir in MESSAGE_STATUS.items()}.get(resource.get("status", "")),
        "status_reason": (resource.get("statusReason") or {}).get("text"),
        "channel": channels.get(code_in(resource.get("medium"), MEDIUM_SYSTEM) or ""),
        "purpose": code_in(resource.get("reasonCode"), PURPOSE_SYSTEM),
        "patient_id": ref_id(resource.get("subject"), "Patient"),
        "recipient": recipients[0].get("reference"),
        "encounter_id": ref_id(resource.get("encounter"), "Encounter"),
        "based_on": ((resource.get("basedOn") or [{}])[0]).get("reference"),
        "sender": (resource.get("sender") or {}).get("reference"),
        "sent_at": sent_at,
        "text": "".join(p.get("contentString", "") for p in resource.get("payload", [])),
    }
