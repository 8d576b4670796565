"""Backport topics, our Subscription and the notifications EHRs post, in both directions of the edge."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_mappings.subscriptions import (
    CRITERIA,
    FILTER_CRITERIA,
    HEARTBEAT_PERIOD,
    PAYLOAD_CONTENT,
    TOPIC_EXTENSION,
    Topic,
    backport_subscription,
    criteria_subscription,
    filters_of,
    ours_only,
    parse_notification,
    topic_of,
)
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.errors import ValidationError
from prm.fhir_names import BACKPORT_SUBSCRIPTION

TOPIC = "http://ehr.example/fhir/SubscriptionTopic/encounter-complete"


def topic_basic(url: str, *resources: str, filters: tuple[str, ...] = ()) -> dict[str, Any]:
    """A topic as the R4 Backport IG carries one: a Basic with R5's SubscriptionTopic as extensions."""
    triggers = [{"url": f"{TOPIC_EXTENSION}.resourceTrigger", "extension": [
        {"url": "description", "valueMarkdown": "status changed"},
        {"url": "resource", "valueUri": f"http://hl7.org/fhir/StructureDefinition/{r}"},
        {"url": "supportedInteraction", "valueCode": "update"}]} for r in resources]
    can_filter = [{"url": f"{TOPIC_EXTENSION}.canFilterBy", "extension": [
        {"url": "resource", "valueUri": resources[0] if resources else "Task"},
        {"url": "filterParameter", "valueString": f}]} for f in filters]
    return {"resourceType": "Basic", "id": "topic", "code": {"coding": [
        {"system": "http://hl7.org/fhir/fhir-types", "code": "SubscriptionTopic"}]},
        "extension": [{"url": f"{TOPIC_EXTENSION}.url", "valueUri": url},
                      {"url": f"{TOPIC_EXTENSION}.title", "valueString": "t"}, *triggers, *can_filter]}


def notification(kind: str, *events: tuple[int, str | None], since: int = 0) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": "http://ehr.example/fhir/Subscription/9"}},
        {"name": "topic", "valueCanonical": TOPIC},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(since)},
    ]
    for number, focus in events:
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(number)},
                                       {"name": "timestamp", "valueInstant": "2026-11-20T12:00:00Z"}]
        if focus:
            parts.append({"name": "focus", "valueReference": {"reference": focus}})
        parameters.append({"name": "notification-event", "part": parts})
    return {"resourceType": "Bundle", "type": "history", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Parameters", "parameter": parameters}}]}


def test_a_topic_names_the_types_that_trigger_it_and_other_basics_are_not_topics() -> None:
    assert topic_of(topic_basic(TOPIC, "Encounter")) is not None
    topic = topic_of(topic_basic(TOPIC, "Encounter", "Appointment", "Encounter"))
    assert topic is not None and (topic.url, topic.resource_types) == (TOPIC, ("Encounter", "Appointment"))
    assert topic_of({"resourceType": "Basic", "id": "b", "code": {"text": "note"}}) is None
    assert topic_of(topic_basic(TOPIC)) is None  # no trigger: nothing it could wake


def test_our_subscription_asks_for_id_only_notifications_with_our_secret_and_a_heartbeat() -> None:
    sub = backport_subscription(TOPIC, "https://prm.example/fhir/hooks/k", "s3cret", 300)
    assert sub["meta"]["profile"] == [BACKPORT_SUBSCRIPTION] and sub["criteria"] == TOPIC
    channel = sub["channel"]
    assert (channel["type"], channel["endpoint"], channel["header"]) == (
        "rest-hook", "https://prm.example/fhir/hooks/k", ["Authorization: Bearer s3cret"])
    assert channel["_payload"]["extension"] == [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]
    assert channel["extension"] == [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": 300}]
    with pytest.raises(ValidationError, match="http"):
        backport_subscription(TOPIC, "ftp://prm.example/hook", "s", 300)


def test_where_a_topic_filters_by_identifier_our_subscription_hears_only_of_the_work_items_we_wrote() -> None:
    tasks = topic_of(topic_basic(TOPIC, "Task", "Encounter", filters=("identifier", "patient", "identifier")))
    assert tasks is not None and tasks.filter_parameters == ("identifier", "patient")
    ours = f"Task?identifier={IDENTIFIER_SYSTEM}|"
    assert ours_only(tasks) == (ours,)  # named by type: the topic's Encounters still all notify
    assert ours_only(Topic(TOPIC, ("Task", "Communication"), ("patient",))) == ()  # cannot filter: hear them all
    assert ours_only(Topic(TOPIC, ("Encounter",), ("identifier",))) == ()  # we sync every Encounter

    sub = backport_subscription(TOPIC, "https://prm.example/fhir/hooks/k", "s3cret", 300, ours_only(tasks))
    assert sub["_criteria"] == {"extension": [{"url": FILTER_CRITERIA, "valueString": ours}]}
    assert filters_of(sub) == (ours,)
    assert filters_of(backport_subscription(TOPIC, "https://prm.example/fhir/hooks/k", "s", 300)) == ()


def test_a_plain_r4_subscription_asks_for_empty_notifications_with_our_secret() -> None:
    """No payload: each notification is an empty POST, so no clinical data travels to the hook; of Tasks, only
    ours match."""
    sub = criteria_subscription(CRITERIA["Task"], "https://prm.example/fhir/hooks/k", "s3cret")
    assert (sub["status"], sub["criteria"]) == ("requested", f"Task?identifier={IDENTIFIER_SYSTEM}|")
    assert "meta" not in sub and "_criteria" not in sub  # not the backport: no profile, no filters
    assert sub["channel"] == {"type": "rest-hook", "endpoint": "https://prm.example/fhir/hooks/k",
                              "header": ["Authorization: Bearer s3cret"]}  # no payload
    assert set(CRITERIA) == {"Patient", "Encounter", "Appointment", "Task"}
    with pytest.raises(ValidationError, match="http"):
        criteria_subscription(CRITERIA["Patient"], "ftp://prm.example/hook", "s")


def test_notifications_say_their_kind_event_numbers_and_focus_types() -> None:
    handshake = parse_notification(notification("handshake"))
    assert (handshake.kind, handshake.topic, handshake.events_since_start, handshake.event_numbers) == (
        "handshake", TOPIC, 0, ())
    event = parse_notification(notification("event-notification", (7, "http://ehr.example/fhir/Encounter/e1"),
                                            (8, "Appointment/a1/_history/2"), (9, None), since=9))
    assert (event.kind, event.event_numbers, event.focus_types, event.events_since_start) == (
        "event-notification", (7, 8, 9), ("Encounter", "Appointment"), 9)


@pytest.mark.parametrize(("body", "message"), [
    (None, "must be a FHIR Bundle"),
    ({"resourceType": "Patient"}, "must be a FHIR Bundle"),
    ({"resourceType": "Bundle", "type": "searchset"}, "history Bundle"),
    ({"resourceType": "Bundle", "type": "history", "entry": []}, "first entry"),
    (notification("gossip"), "unknown notification type"),
    (notification("event-notification", (-1, None)), "negative"),
    (notification("heartbeat") | {"entry": [{"resource": {"resourceType": "Parameters", "parameter": [
        {"name": "type", "valueCode": "heartbeat"},
        {"name": "events-since-subscription-start", "valueString": "many"}]}}]}, "not a number"),
    (notification("event-notification", (1, None)) | {"entry": [{"resource": {"resourceType": "Parameters",
        "parameter": [{"name": "type", "valueCode": "event-notification"},
                      {"name": "notification-event", "part": ["event-number"]}]}}]}, "must be an object"),
])
def test_anything_else_is_refused_with_the_reason(body: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_notification(body)
