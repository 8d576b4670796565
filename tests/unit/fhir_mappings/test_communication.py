"""OutreachMessage -> Communication round-trips (domain -> FHIR -> R4B -> back, equal) and what must be refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import communication as fhir_communication

from fhir_mappings.communication import outreach_fields_from_communication, outreach_message_to_communication
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import ValidationError
from prm.followup_models import OUTREACH_CHANNELS, OUTREACH_PURPOSES, OutreachMessage

SENT_AT = datetime(2026, 11, 20, 9, 30, 15, tzinfo=UTC)
TEXT = "Hi Oliver, a reminder of your hygiene appointment at Riverside Dental, Bankside, on 24 Nov at 10:40."
ROUND_TRIP = ("business_key", "status", "channel", "purpose", "patient_id", "encounter_id", "based_on", "sender",
              "sent_at", "text")


def message(**overrides: Any) -> OutreachMessage:
    values: dict[str, Any] = {
        "id": 41, "connection_id": 1, "business_key": "outreach:1:appt-000037-002:reminder:sms",
        "patient_id": "pat-000037", "recipient": None, "channel": "sms", "purpose": "reminder", "text": TEXT,
        "encounter_id": None, "based_on": "Appointment/appt-000037-002", "source": "journey:reminder-48h",
        "sender": "Organization/org-riverside-dental", "status": "sent", "status_reason": None,
        "due_at": datetime(2026, 11, 20, 9, 30, tzinfo=UTC), "sent_at": SENT_AT,
        "created_by": "system:journey-runner", "created_at": datetime(2026, 11, 18, 9, 0, tzinfo=UTC),
        "updated_at": SENT_AT, "ledger": [{"at": "2026-11-20T09:30:15+00:00", "to": "sent", "why": "delivered"}],
    }
    values.update(overrides)
    return OutreachMessage(**values)


def round_trip(msg: OutreachMessage) -> tuple[dict[str, Any], dict[str, Any]]:
    resource = outreach_message_to_communication(msg)
    fhir_communication.Communication.model_validate(json.loads(json.dumps(resource)))  # plain JSON, R4B-valid
    return resource, outreach_fields_from_communication(resource)


def strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every (path, string) in a resource, so a test can say where free text may appear."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from strings(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value


@pytest.mark.parametrize("purpose", OUTREACH_PURPOSES)
@pytest.mark.parametrize("channel", OUTREACH_CHANNELS)
def test_every_channel_and_purpose_round_trips(channel: str, purpose: str) -> None:
    msg = message(channel=channel, purpose=purpose)
    _, back = round_trip(msg)
    assert {k: back[k] for k in ROUND_TRIP} == {k: getattr(msg, k) for k in ROUND_TRIP}
    assert back["recipient"] == "Patient/pat-000037"  # the domain's default recipient, made explicit


@pytest.mark.parametrize(("channel", "code"), [("sms", "SMSWRIT"), ("email", "EMAILWRIT"), ("phone", "PHONE"),
                                               ("letter", "MAILWRIT"), ("portal", "ONLINEWRIT"),
                                               ("in-person", "FACE")])
def test_medium_uses_participation_mode(channel: str, code: str) -> None:
    medium = outreach_message_to_communication(message(channel=channel))["medium"]
    assert medium[0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode"
    assert medium[0]["coding"][0]["code"] == code


@pytest.mark.parametrize(("purpose", "category"), [("reminder", "reminder"), ("recall", "reminder"),
                                                   ("follow-up", "notification"), ("check-in", "notification"),
                                                   ("feedback-invite", "notification"),
                                                   ("feedback-reply", "notification"),
                                                   ("thank-you", "notification")])
def test_category_follows_purpose(purpose: str, category: str) -> None:
    resource = outreach_message_to_communication(message(purpose=purpose))
    assert resource["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/communication-category", "code": category,
        "display": category.capitalize()}
    assert resource["reasonCode"][0]["coding"][0]["system"] == "https://fhir-prm.org/fhir/CodeSystem/outreach-purpose"


def test_sent_message_is_completed_with_its_time_in_utc() -> None:
    resource = outreach_message_to_communication(message(sent_at=SENT_AT.astimezone(ZoneInfo("Pacific/Auckland"))))
    assert resource["status"] == "completed" and resource["sent"] == "2026-11-20T09:30:15+00:00"
    assert resource["identifier"] == [{"system": IDENTIFIER_SYSTEM, "value": "outreach:1:appt-000037-002:reminder:sms"}]
    assert resource["subject"] == {"reference": "Patient/pat-000037"}
    assert "statusReason" not in resource and "encounter" not in resource


def test_failed_message_is_not_done_with_its_reason_and_no_sent_time() -> None:
    msg = message(status="failed", status_reason="mobile number rejected by the SMS gateway", sent_at=None,
                  channel="sms", recipient="RelatedPerson/rp-000037-1", encounter_id="enc-000037-003")
    resource, back = round_trip(msg)
    assert resource["status"] == "not-done" and "sent" not in resource
    assert resource["statusReason"] == {"text": "mobile number rejected by the SMS gateway"}
    assert {k: back[k] for k in (*ROUND_TRIP, "status_reason", "recipient")} == {
        k: getattr(msg, k) for k in (*ROUND_TRIP, "status_reason", "recipient")}


def test_failed_without_a_reason_says_not_sent_and_a_known_reason_is_coded() -> None:
    plain = outreach_message_to_communication(message(status="failed", sent_at=None))
    assert plain["statusReason"] == {"text": "not sent"}
    coded = outreach_message_to_communication(message(status="failed", status_reason="invalid-phone-number"))
    assert coded["statusReason"]["coding"] == [{
        "system": "http://terminology.hl7.org/CodeSystem/communication-not-done-reason",
        "code": "invalid-phone-number", "display": "Invalid Phone Number"}]


def test_optional_references_are_left_out_when_unset() -> None:
    resource, back = round_trip(message(based_on=None, sender=None, encounter_id=None))
    assert not {"basedOn", "sender", "encounter"} & resource.keys()
    assert (back["based_on"], back["sender"], back["encounter_id"]) == (None, None, None)


@pytest.mark.parametrize("status", ["planned", "cancelled"])
def test_only_sent_or_failed_messages_are_written(status: str) -> None:
    with pytest.raises(ValidationError, match="only sent or failed"):
        outreach_message_to_communication(message(status=status))


@pytest.mark.parametrize(("overrides", "complaint"), [
    ({"channel": "pigeon"}, "unknown channel"),
    ({"purpose": "birthday"}, "unknown purpose"),
    ({"recipient": "pat-000037"}, "not a Type/id reference"),
    ({"recipient": "Encounter/enc-000037-001"}, "Encounter/enc-000037-001': R4 allows only "),
    ({"sender": "Location/loc-rdc-bankside"}, "Location/loc-rdc-bankside': R4 allows only "),
    ({"based_on": "Appointment/"}, "not a Type/id reference"),
    ({"based_on": "https://ehr.example/fhir/Appointment/appt-000037-002"}, "not a Type/id reference"),
    ({"patient_id": "pat 000037"}, "not a FHIR id"),
    ({"encounter_id": "enc/000037"}, "not a FHIR id"),
    ({"sent_at": None}, "sent_at is missing"),
    ({"sent_at": datetime(2026, 11, 20, 9, 30)}, "naive"),  # naive on purpose
    ({"business_key": ""}, "business_key is missing"),
    ({"text": ""}, "not a valid R4 Communication"),
])
def test_invalid_input_is_refused(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        outreach_message_to_communication(message(**overrides))


def test_no_field_but_the_payload_carries_the_domain_text() -> None:
    """Invariant 5's shape: free text leaves only as sent; source, author and ledger never leave."""
    msg = message(text="Thanks for visiting today. Reply STOP to opt out.")
    resource = outreach_message_to_communication(msg)
    assert resource["payload"] == [{"contentString": msg.text}]
    found = dict(strings(resource))
    assert [p for p, s in found.items() if msg.text in s] == ["payload[0].contentString"]
    leaked = {"journey:reminder-48h", "system:journey-runner", "delivered"}
    assert not [p for p, s in found.items() if any(secret in s for secret in leaked)]
