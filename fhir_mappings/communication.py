"""OutreachMessage -> FHIR R4 Communication (pure); the checks it shares with the Task mapper are in outbound.py."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import communication as fhir_communication

from fhir_mappings.common import instant, ref_id
from fhir_mappings.outbound import (
    RECIPIENT_TYPES,
    SENDER_TYPES,
    business_identifier,
    checked,
    code_in,
    coded,
    fhir_instant,
    our_key,
    reference,
    typed_reference,
)
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
