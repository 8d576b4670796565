"""CareTicket -> Task round-trips, the Task status table, the Communication fallback and what must be refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import communication as fhir_communication
from fhir.resources.R4B import task as fhir_task

from fhir_mappings.task import (
    care_ticket_fields_from_task,
    care_ticket_status_from_task,
    care_ticket_to_communication,
    care_ticket_to_task,
)
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import ValidationError
from prm.followup_models import TICKET_PRIORITIES, TICKET_REASONS, TICKET_STATUSES, CareTicket
from tests.unit.fhir_mappings.test_communication import strings

CREATED = datetime(2026, 11, 20, 11, 5, 42, tzinfo=UTC)
DESCRIPTION = "Call the patient back about the feedback on their hygiene visit; offer a review appointment."
ROUND_TRIP = ("business_key", "status", "reason", "description", "priority", "patient_id", "encounter_id", "owner",
              "requester", "focus", "due_at")


def ticket(**overrides: Any) -> CareTicket:
    values: dict[str, Any] = {
        "id": 7, "connection_id": 1, "business_key": "care-ticket:1:feedback:12", "patient_id": "pat-000037",
        "reason": "negative-feedback", "description": DESCRIPTION, "priority": "urgent",
        "owner": "PractitionerRole/prole-rdc-03", "requester": "Organization/org-riverside-dental",
        "encounter_id": "enc-000037-003", "focus": "Appointment/appt-000037-003", "source": "feedback:12",
        "status": "open", "ehr_status": None, "due_at": datetime(2026, 11, 21, 17, 0, tzinfo=UTC),
        "created_by": "rule:negative-feedback", "created_at": CREATED, "updated_at": CREATED, "closed_at": None,
    }
    values.update(overrides)
    return CareTicket(**values)


def round_trip(t: CareTicket) -> tuple[dict[str, Any], dict[str, Any]]:
    resource = care_ticket_to_task(t)
    fhir_task.Task.model_validate(json.loads(json.dumps(resource)))  # plain JSON, R4B-valid
    return resource, care_ticket_fields_from_task(resource)


@pytest.mark.parametrize("reason", TICKET_REASONS)
@pytest.mark.parametrize("priority", TICKET_PRIORITIES)
@pytest.mark.parametrize("status", TICKET_STATUSES)
def test_every_status_priority_and_reason_round_trips(status: str, priority: str, reason: str) -> None:
    t = ticket(status=status, priority=priority, reason=reason)
    resource, back = round_trip(t)
    assert back == {k: getattr(t, k) for k in ROUND_TRIP}
    assert care_ticket_status_from_task(resource) == status  # Task.status alone says the same as businessStatus
    assert resource["priority"] == priority and resource["intent"] == "order"


@pytest.mark.parametrize(("status", "task_status"), [("open", "ready"), ("in_progress", "in-progress"),
                                                     ("done", "completed"), ("cancelled", "cancelled")])
def test_task_status_and_business_status(status: str, task_status: str) -> None:
    resource = care_ticket_to_task(ticket(status=status))
    assert resource["status"] == task_status
    assert resource["businessStatus"]["coding"][0]["system"] == "https://fhir-prm.org/fhir/CodeSystem/care-ticket-status"
    assert resource["businessStatus"]["coding"][0]["code"] == status and resource["businessStatus"]["text"]


def test_the_task_carries_what_the_ehr_needs() -> None:
    resource = care_ticket_to_task(ticket(updated_at=datetime(2026, 11, 20, 23, 15, tzinfo=ZoneInfo("Europe/London"))))
    assert resource["identifier"] == [{"system": IDENTIFIER_SYSTEM, "value": "care-ticket:1:feedback:12"}]
    assert resource["for"] == {"reference": "Patient/pat-000037"}
    assert resource["encounter"] == {"reference": "Encounter/enc-000037-003"}
    assert resource["authoredOn"] == "2026-11-20T11:05:42+00:00"
    assert resource["lastModified"] == "2026-11-20T23:15:00+00:00"
    assert resource["restriction"] == {"period": {"end": "2026-11-21T17:00:00+00:00"}}
    reason = {"system": "https://fhir-prm.org/fhir/CodeSystem/care-ticket-reason", "code": "negative-feedback",
              "display": "Follow up negative feedback"}
    assert resource["code"]["coding"] == [reason] and resource["reasonCode"]["coding"] == [reason]
    assert "note" not in resource


def test_times_are_utc_whatever_zone_they_arrive_in() -> None:
    auckland = ZoneInfo("Pacific/Auckland")
    resource = care_ticket_to_task(ticket(created_at=CREATED.astimezone(auckland),
                                          due_at=datetime(2026, 11, 22, 6, 0, tzinfo=auckland)))
    assert resource["authoredOn"] == "2026-11-20T11:05:42+00:00"
    assert resource["restriction"]["period"]["end"] == "2026-11-21T17:00:00+00:00"


def test_authored_on_stands_in_for_a_missing_created_at() -> None:
    resource = care_ticket_to_task(ticket(created_at=None, updated_at=None), authored_on=CREATED)
    assert resource["authoredOn"] == resource["lastModified"] == "2026-11-20T11:05:42+00:00"
    with pytest.raises(ValidationError, match="created_at is missing"):
        care_ticket_to_task(ticket(created_at=None))


def test_optional_references_are_left_out_when_unset() -> None:
    t = ticket(owner=None, requester=None, encounter_id=None, focus=None, due_at=None)
    resource, back = round_trip(t)
    assert not {"owner", "requester", "encounter", "focus", "restriction"} & resource.keys()
    assert back == {k: getattr(t, k) for k in ROUND_TRIP}


@pytest.mark.parametrize(("task_status", "ticket_status"), [
    ("draft", "open"), ("requested", "open"), ("received", "open"), ("accepted", "open"), ("ready", "open"),
    ("in-progress", "in_progress"), ("on-hold", "in_progress"), ("completed", "done"), ("cancelled", "cancelled"),
    ("rejected", "cancelled"), ("failed", "cancelled"), ("entered-in-error", None),
])
def test_ticket_status_from_every_r4_task_status(task_status: str, ticket_status: str | None) -> None:
    assert care_ticket_status_from_task({"resourceType": "Task", "status": task_status}) == ticket_status


def test_an_unknown_task_status_is_refused() -> None:
    with pytest.raises(ValidationError, match="not an R4 Task status"):
        care_ticket_status_from_task({"resourceType": "Task", "status": "done"})


def test_status_comes_from_task_status_when_the_ehr_dropped_our_business_status() -> None:
    resource = care_ticket_to_task(ticket(status="open"))
    del resource["businessStatus"]
    resource["status"] = "on-hold"
    assert care_ticket_fields_from_task(resource)["status"] == "in_progress"


@pytest.mark.parametrize(("overrides", "complaint"), [
    ({"status": "closed"}, "unknown status"),
    ({"priority": "stat"}, "unknown priority"),
    ({"reason": "birthday"}, "unknown reason"),
    ({"owner": "prole-rdc-03"}, "not a Type/id reference"),
    ({"owner": "Encounter/enc-000037-003"}, "Encounter/enc-000037-003': R4 allows only "),
    ({"requester": "CareTeam/ct-1"}, "CareTeam/ct-1': R4 allows only "),
    ({"focus": "Appointment"}, "not a Type/id reference"),
    ({"focus": "Appointment/appt 000037"}, "not a Type/id reference"),
    ({"patient_id": ""}, "not a FHIR id"),
    ({"due_at": datetime(2026, 11, 21, 17, 0)}, "naive"),
    ({"business_key": ""}, "business_key is missing"),
    ({"description": ""}, "not a valid R4 Task"),
])
def test_invalid_input_is_refused(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        care_ticket_to_task(ticket(**overrides))


def test_no_field_but_the_description_carries_the_domain_text() -> None:
    """Invariant 5's shape: staff-facing text leaves only as the description; source and author never leave."""
    resource = care_ticket_to_task(ticket())
    found = dict(strings(resource))
    assert [p for p, s in found.items() if DESCRIPTION in s] == ["description"]
    assert not [p for p, s in found.items() if "feedback:12" in s and p != "identifier[0].value"]
    assert not [p for p, s in found.items() if "rule:negative-feedback" in s]


@pytest.mark.parametrize(("status", "communication_status"), [("open", "in-progress"), ("in_progress", "in-progress"),
                                                              ("done", "completed"), ("cancelled", "stopped")])
def test_fallback_communication_for_every_status(status: str, communication_status: str) -> None:
    resource = care_ticket_to_communication(ticket(status=status))
    fhir_communication.Communication.model_validate(json.loads(json.dumps(resource)))
    assert resource["status"] == communication_status
    assert resource["identifier"] == care_ticket_to_task(ticket(status=status))["identifier"]


def test_fallback_tells_the_care_team() -> None:
    resource = care_ticket_to_communication(ticket())
    assert resource["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/communication-category", "code": "notification",
        "display": "Notification"}
    assert resource["subject"] == {"reference": "Patient/pat-000037"}
    assert resource["encounter"] == {"reference": "Encounter/enc-000037-003"}
    assert resource["recipient"] == [{"reference": "PractitionerRole/prole-rdc-03"}]
    assert resource["sender"] == {"reference": "Organization/org-riverside-dental"}
    assert resource["sent"] == "2026-11-20T11:05:42+00:00"
    assert resource["reasonCode"][0]["coding"][0]["code"] == "negative-feedback"
    assert resource["payload"] == [{"contentString": f"Care ticket (urgent, due 2026-11-21): {DESCRIPTION}"}]
    found = dict(strings(resource))
    assert [p for p, s in found.items() if DESCRIPTION in s] == ["payload[0].contentString"]


def test_fallback_dates_the_due_day_in_the_clinic_zone_and_leaves_out_what_is_unset() -> None:
    late = ticket(priority="routine", due_at=datetime(2026, 11, 21, 3, 0, tzinfo=UTC))
    assert care_ticket_to_communication(late)["payload"][0]["contentString"].startswith(
        "Care ticket (routine, due 2026-11-21): ")
    in_new_york = care_ticket_to_communication(late, zone=ZoneInfo("America/New_York"))
    assert in_new_york["payload"][0]["contentString"].startswith("Care ticket (routine, due 2026-11-20): ")
    bare = care_ticket_to_communication(ticket(owner=None, requester=None, encounter_id=None, due_at=None))
    assert not {"recipient", "sender", "encounter"} & bare.keys()
    assert bare["payload"][0]["contentString"] == f"Care ticket (urgent): {DESCRIPTION}"


@pytest.mark.parametrize(("overrides", "complaint"), [
    ({"owner": "Location/loc-rdc-bankside"}, "Location/loc-rdc-bankside': R4 allows only "),
    ({"requester": "Group/g-1"}, "Group/g-1': R4 allows only "),
    ({"status": "closed"}, "unknown status"),
    ({"due_at": datetime(2026, 11, 21, 17, 0)}, "naive"),
])
def test_fallback_refuses_invalid_input(overrides: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        care_ticket_to_communication(ticket(**overrides))
