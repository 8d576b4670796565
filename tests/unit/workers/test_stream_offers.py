"""Which refusals pause a stream: an optional type the check found unlisted, lacking an interaction, or not
granted, never served, refused by the EHR (403, 404, 405, or 400 not-supported); nothing else. Which checks
resume it: only one that saw the type offered."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from connector.backend import BackendAuthError
from prm.errors import PermanentEhrError, TransientEhrError
from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.stream_offers import not_offered, offered, pause_note
from workers.sync_run import StreamRun


def checked(**resources: dict[str, Any]) -> Connection:
    return Connection(name="ehr", iss="https://ehr.example/fhir", client_id="prm",
                      capability_profile={"resources": resources})


OFFERED = {"listed": True, "read": True, "search": True, "granted": "rs"}


def test_an_optional_type_is_not_offered_when_unlisted_lacking_read_or_search_or_not_granted() -> None:
    assert not_offered(checked(Location={"listed": False}), "Location") == \
        "its CapabilityStatement lists no Location"
    assert not_offered(checked(Location={**OFFERED, "search": False}), "Location") == \
        "its CapabilityStatement lists no search for Location"
    assert not_offered(checked(Location={**OFFERED, "granted": "r"}), "Location") == \
        "our backend client was not granted Location search"
    assert not_offered(checked(Location=OFFERED), "Location") is None
    assert not_offered(checked(Location={**OFFERED, "granted": None}), "Location") is None, "no token: unknown"
    assert not_offered(Connection(name="ehr", iss="https://x", client_id="p"), "Location") is None, "never checked"
    assert not_offered(checked(Patient={"listed": False}), "Patient") is None, "sync cannot do without it"


def test_only_the_ehrs_refusal_of_a_type_it_does_not_offer_and_never_served_pauses() -> None:
    unlisted = checked(RelatedPerson={"listed": False})
    never = SyncStream(connection_id=1, resource_type="RelatedPerson")
    for refusal in (PermanentEhrError("no", 404), PermanentEhrError("no", 403), PermanentEhrError("no", 405),
                    PermanentEhrError("no", 400, ("not-supported",))):
        assert pause_note(unlisted, never, StreamRun("RelatedPerson"), refusal) == (
            f"the EHR refused RelatedPerson (HTTP {refusal.status}) and its CapabilityStatement lists no "
            "RelatedPerson; a check of the connection that finds it offered resumes it")
    for other in (PermanentEhrError("bad", 400, ("invalid",)), PermanentEhrError("gone", 410),
                  TransientEhrError("busy"), ValueError("ours"),
                  BackendAuthError("the token endpoint said no", "invalid_client", 403)):
        assert pause_note(unlisted, never, StreamRun("RelatedPerson"), other) is None, other
    refusal = PermanentEhrError("no", 404)
    assert pause_note(checked(RelatedPerson=OFFERED), never, StreamRun("RelatedPerson"), refusal) is None, \
        "a type the check found offered: an error for IT"
    served = SyncStream(connection_id=1, resource_type="RelatedPerson",
                        last_success_at=datetime(2026, 11, 20, tzinfo=UTC))
    assert pause_note(unlisted, served, StreamRun("RelatedPerson"), refusal) is None, "it was served: an error for IT"
    assert pause_note(unlisted, never, StreamRun("RelatedPerson", pages=2), refusal) is None, \
        "pages stored, then a refused link: served"


def test_only_a_check_that_saw_the_type_offered_resumes_a_paused_stream() -> None:
    assert offered(checked(Location=OFFERED), "Location")
    for unknown in ({}, {"listed": None}, {**OFFERED, "granted": None}, {**OFFERED, "granted": "r"},
                    {"listed": False}):
        assert not offered(checked(Location=unknown), "Location"), unknown
    assert not offered(Connection(name="ehr", iss="https://x", client_id="p"), "Location"), "never checked"
