"""Subscription topics the sandbox EHR offers beyond sekmet's own (which cover Encounter, Appointment and Patient):
one for Task status, as EHRs that take work items back from apps offer, so a care ticket's Task completed in
the EHR reaches fhir-prm within seconds."""

from __future__ import annotations

from typing import Any

from sekmet.subscriptions.backport import topic_basic

TOPICS: list[dict[str, Any]] = [
    topic_basic("task-status", "Task status changed", "A Task was created or its status changed", "Task",
                "%previous.empty() or %previous.status != %current.status",
                [("identifier", "Task"), ("patient", "Task")]),
]
