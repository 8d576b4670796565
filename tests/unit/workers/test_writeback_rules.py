"""The drain's pure rules: which types to try, how a 412 merge keeps what the EHR added, what counts as newer."""

from __future__ import annotations

import pytest

from workers.writeback_render import fallback_chain, merge, refused_by_profile
from workers.writeback_status import newer


@pytest.mark.parametrize("preferred, fallbacks, chain", [
    ("Task", "Task:Communication", ["Task", "Communication"]),
    ("Task", "", ["Task"]),
    ("Communication", "Task:Communication", ["Communication"]),
    ("Task", "Task:Communication,Communication:Task", ["Task", "Communication"]),  # no loops
])
def test_fallback_chain(preferred: str, fallbacks: str, chain: list[str]) -> None:
    assert fallback_chain(preferred, fallbacks) == chain


def test_the_capability_profile_names_refused_types() -> None:
    profile = {"writes": {"Task": {"ok": False, "reason": "no system/Task.c scope"}, "Communication": {"ok": True}}}
    assert refused_by_profile(profile, "Task") == "no system/Task.c scope"
    assert refused_by_profile(profile, "Communication") is None
    assert refused_by_profile({}, "Task") is None  # never checked: try it and learn from the answer


def test_merge_keeps_what_the_ehr_added_and_lays_our_fields_over() -> None:
    current = {"resourceType": "Task", "id": "t1", "meta": {"versionId": "4"}, "status": "ready",
               "note": [{"text": "Left a voicemail"}], "performerType": [{"text": "nurse"}], "priority": "routine"}
    ours = {"resourceType": "Task", "id": "t1", "status": "in-progress", "priority": "urgent",
            "identifier": [{"system": "s", "value": "k"}]}
    merged = merge(current, ours)
    assert merged["status"] == "in-progress" and merged["priority"] == "urgent"
    assert merged["note"] == [{"text": "Left a voicemail"}] and merged["performerType"] == [{"text": "nurse"}]
    assert merged["meta"] == {"versionId": "4"} and merged["id"] == "t1"
    assert current["status"] == "ready"  # the EHR's copy is not changed in place


@pytest.mark.parametrize("seen, written, expected", [
    ("3", "2", True), ("2", "2", False), ("1", "2", False), (None, "2", False), ("1", None, True),
    ("b7", "a1", True),
])
def test_newer_versions(seen: str | None, written: str | None, expected: bool) -> None:
    assert newer(seen, written) is expected
