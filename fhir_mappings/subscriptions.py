"""FHIR R4 Subscriptions Backport (topic-based, rest-hook) <-> the PRM's words: topics, our Subscription,
and the notifications an EHR posts to us; and plain R4 Subscriptions (a search as criteria) for EHRs without
the backport, whose notifications are empty.

A notification is only a hint that a stream has news: the sync reads the change itself, from the cursor,
through the checks every page passes. So nothing of a notification is kept but when it came and its event
numbers, and an `id-only` payload is all we ask for (no clinical data travels to the hook).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.subscription import Subscription

from fhir_mappings.common import check_r4
from fhir_mappings.written import IDENTIFIER_SYSTEM, WRITTEN_TYPES
from prm.errors import ValidationError
from prm.fhir_names import BACKPORT, BACKPORT_SUBSCRIPTION

PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
# R4 has no SubscriptionTopic: the backport IG carries R5's as a Basic with cross-version extensions
TOPIC_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
NOTIFICATION_TYPES = frozenset({"handshake", "heartbeat", "event-notification", "query-status", "query-event"})


@dataclass(frozen=True)
class Topic:
    """A topic the EHR offers: its canonical URL and the resource types whose changes trigger it."""

    url: str
    resource_types: tuple[str, ...]
    filter_parameters: tuple[str, ...] = ()  # what a subscriber may filter its notifications by (canFilterBy)


@dataclass(frozen=True)
class Notification:
    """What a notification Bundle says: its kind, the topic, the event count so far and each event's focus type."""

    kind: str
    topic: str | None
    events_since_start: int | None
    event_numbers: tuple[int, ...]
    focus_types: tuple[str, ...]


def _extensions(node: dict[str, Any], url: str) -> list[dict[str, Any]]:
    return [e for e in node.get("extension") or [] if isinstance(e, dict) and e.get("url") == url]


def _value(extension: dict[str, Any]) -> Any:
    return next((v for k, v in extension.items() if k.startswith("value")), None)


def topic_of(basic: dict[str, Any]) -> Topic | None:
    """The topic a Basic (backport encoding) defines; None when the Basic is not a topic or names no trigger."""
    urls = [_value(e) for e in _extensions(basic, f"{TOPIC_EXTENSION}.url")]
    if not urls or not isinstance(urls[0], str):
        return None
    types: list[str] = []
    for trigger in _extensions(basic, f"{TOPIC_EXTENSION}.resourceTrigger"):
        for part in _extensions(trigger, "resource"):
            resource = _value(part)
            if isinstance(resource, str) and resource:
                types.append(resource.rsplit("/", 1)[-1])  # a StructureDefinition canonical or a bare type
    parameters = [_value(part) for can in _extensions(basic, f"{TOPIC_EXTENSION}.canFilterBy")
                  for part in _extensions(can, "filterParameter")]
    return Topic(urls[0], tuple(dict.fromkeys(types)),
                 tuple(dict.fromkeys(p for p in parameters if isinstance(p, str) and p))) if types else None


def ours_only(topic: Topic) -> tuple[str, ...]:
    """Filters that keep a topic's Task and Communication notifications to those fhir-prm wrote (our identifier
    system), where the topic lets us filter by identifier: we sync only ours, so the EHR's other work items
    would wake those streams for nothing. Filters name their type, so they leave a topic's other types alone."""
    if "identifier" not in topic.filter_parameters:
        return ()
    return tuple(f"{t}?identifier={IDENTIFIER_SYSTEM}|" for t in topic.resource_types if t in WRITTEN_TYPES)


def filters_of(subscription: dict[str, Any]) -> tuple[str, ...]:
    """The filter criteria a (backport) Subscription carries, as the EHR holds it."""
    criteria = subscription.get("_criteria")
    return tuple(str(_value(e)) for e in _extensions(criteria, FILTER_CRITERIA)) if isinstance(criteria, dict) else ()


def backport_subscription(topic: str, endpoint: str, secret: str, heartbeat_s: int,
                          filters: Sequence[str] = ()) -> dict[str, Any]:
    """Our rest-hook Subscription to `topic`: id-only notifications to `endpoint`, authenticated by `secret`
    in the Authorization header, with a heartbeat so a silent hook shows as silent; `filters` (backport filter
    criteria, `Type?param=value`) narrow what it notifies of."""
    if not endpoint.startswith(("https://", "http://")):
        raise ValidationError(f"a rest-hook endpoint must be an http(s) URL, got {endpoint!r}")
    subscription: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT_SUBSCRIPTION]},
        "status": "requested",
        "reason": "fhir-prm: wake the sync of what changed, so follow-ups start within seconds",
        "criteria": topic,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
            "header": [f"Authorization: Bearer {secret}"],
            "extension": [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": heartbeat_s}],
        },
    }
    if filters:
        subscription["_criteria"] = {"extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in filters]}
    check_r4(Subscription, subscription, f"the Subscription to {topic}")
    return subscription


# Plain R4 Subscriptions (no topics): one search per type whose changes should wake its stream at once, as the
# topics do where the EHR offers them; of Tasks only ours (we sync no others)
CRITERIA = {"Patient": "Patient?", "Encounter": "Encounter?", "Appointment": "Appointment?",
            "Task": f"Task?identifier={IDENTIFIER_SYSTEM}|"}


def criteria_subscription(criteria: str, endpoint: str, secret: str) -> dict[str, Any]:
    """Our plain R4 rest-hook Subscription to changes matching `criteria` (a search): no payload, so each
    notification is an empty POST to `endpoint` (no clinical data travels to the hook), authenticated by
    `secret` in the Authorization header."""
    if not endpoint.startswith(("https://", "http://")):
        raise ValidationError(f"a rest-hook endpoint must be an http(s) URL, got {endpoint!r}")
    subscription: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "fhir-prm: wake the sync of what changed, so follow-ups start within seconds",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "header": [f"Authorization: Bearer {secret}"]},
    }
    check_r4(Subscription, subscription, f"the Subscription to {criteria}")
    return subscription


def _number(value: Any, what: str) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ValidationError(f"{what} {value!r} is not a number") from None
    if number < 0:
        raise ValidationError(f"{what} {value!r} is negative")
    return number


def _focus_type(reference: Any) -> str | None:
    """`[base/]Type/id[/_history/v]` -> Type."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    return parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None


def parse_notification(body: Any) -> Notification:
    """A backport notification Bundle (a `history` Bundle whose first entry is the R4 `Parameters`
    SubscriptionStatus); ValidationError says what is wrong with anything else."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise ValidationError("a subscription notification must be a FHIR Bundle")
    if body.get("type") != "history":
        raise ValidationError(f"a subscription notification is a history Bundle, not {body.get('type')!r}")
    entries = body.get("entry") or []
    status = entries[0].get("resource") if entries and isinstance(entries[0], dict) else None
    if not isinstance(status, dict) or status.get("resourceType") != "Parameters":
        raise ValidationError("the notification's first entry must be its SubscriptionStatus (Parameters)")
    kind = topic = None
    since: int | None = None
    numbers: list[int] = []
    focus: list[str] = []
    for parameter in status.get("parameter") or []:
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name == "type":
            kind = parameter.get("valueCode")
        elif name == "topic":
            topic = parameter.get("valueCanonical") or parameter.get("valueUri")
        elif name in ("events-since-subscription-start", "eventsSinceSubscriptionStart"):
            since = _number(parameter.get("valueString", parameter.get("valueInteger64",
                                                                      parameter.get("valueInteger"))),
                            "events-since-subscription-start")
        elif name in ("notification-event", "notificationEvent"):
            for part in parameter.get("part") or []:
                if not isinstance(part, dict):
                    raise ValidationError("a notification-event part must be an object")
                if part.get("name") in ("event-number", "eventNumber"):
                    numbers.append(_number(part.get("valueString", part.get("valueInteger")), "event-number"))
                elif part.get("name") == "focus" and (found := _focus_type(part.get("valueReference"))):
                    focus.append(found)
    if kind not in NOTIFICATION_TYPES:
        raise ValidationError(f"unknown notification type {kind!r}; expected one of {sorted(NOTIFICATION_TYPES)}")
    return Notification(kind, topic, since, tuple(numbers), tuple(dict.fromkeys(focus)))
