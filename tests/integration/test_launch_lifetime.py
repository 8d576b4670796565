"""A sidebar launch lasts as long as the EHR's grant and the connection, and no longer, and shows and does only
what the EHR granted it.

The sidebar and its API serve fhir-prm's own copy without calling the EHR, so the launch itself must end: a
token that expired is renewed on the next request (the EHR says whether the user may still see the patient),
one that cannot be renewed ends the launch, as do PRM_LAUNCH_MAX_HOURS (12) and a connection IT switched off.
Each end is audited with its reason; the page says to open fhir-prm again, the API answers 401.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from sqlmodel import col, select

from ehr_sandbox.stack import SandboxStack
from prm import connections
from prm.audit import Actor
from prm.db import Database
from prm.models import AuditRecord, Launch
from tests.integration.conftest import LiveApp, sync_sandbox
from tests.integration.launch_helpers import api_token, launch


def stored(app: LiveApp, handle: str, **changes: Any) -> Launch:
    """The launch row, after setting `changes` on it (a value a callable gets the row's own)."""
    database = Database(app.database_url)
    try:
        with database.session() as session:
            row = session.exec(select(Launch).where(Launch.handle == handle)).one()
            for name, value in changes.items():
                setattr(row, name, value(row) if callable(value) else value)
            session.add(row)
            session.commit()
            session.refresh(row)
            session.expunge(row)
            return row
    finally:
        database.dispose()


def now() -> datetime:
    return datetime.now(UTC)


def ends_of(app: LiveApp, launch_id: int | None) -> list[str | None]:
    database = Database(app.database_url)
    try:
        with database.session() as session:
            return [r.detail for r in session.exec(select(AuditRecord).where(
                AuditRecord.action == "launch.end", col(AuditRecord.launch_id) == launch_id))]
    finally:
        database.dispose()


def test_an_expired_token_is_renewed_at_the_next_request_and_the_sidebar_goes_on(live_app: LiveApp,
                                                                                  sandbox: SandboxStack) -> None:
    done = launch(sandbox, "pat-000012")
    before = stored(live_app, done.handle, expires_at=lambda row: row.completed_at - timedelta(seconds=1))
    page = requests.get(f"{live_app.url}/app/{done.handle}/", timeout=20)
    assert page.status_code == 200, page.text[:300]
    after = stored(live_app, done.handle)
    assert after.status == "active" and after.expires_at is not None and before.expires_at is not None
    assert after.expires_at > before.expires_at and after.access_token_enc != before.access_token_enc


def test_an_expired_token_the_ehr_cannot_renew_ends_the_launch(live_app: LiveApp, sandbox: SandboxStack) -> None:
    done = launch(sandbox, "pat-000013")
    row = stored(live_app, done.handle, refresh_token_enc=None,
                 expires_at=lambda row: row.completed_at - timedelta(seconds=1))
    api = requests.get(f"{live_app.url}/api/{done.handle}/follow-ups", timeout=20)
    assert api.status_code == 401 and api.json()["error"] == "session_ended"
    page = requests.get(f"{live_app.url}/app/{done.handle}/", timeout=20)
    assert page.status_code == 401 and 'data-reason="session_expired"' in page.text
    ended = stored(live_app, done.handle)
    assert (ended.status, ended.failure_reason, ended.access_token_enc) == ("ended", "token_expired", None)
    assert ends_of(live_app, row.id) == ["token_expired"], "ended once, audited with its reason"


def test_a_launch_ends_after_the_longest_shift(live_app: LiveApp, sandbox: SandboxStack) -> None:
    done = launch(sandbox, "pat-000014")
    row = stored(live_app, done.handle, completed_at=lambda row: row.completed_at - timedelta(hours=12, minutes=1))
    page = requests.get(f"{live_app.url}/app/{done.handle}/", timeout=20)
    assert page.status_code == 401
    assert stored(live_app, done.handle).failure_reason == "max_age" and ends_of(live_app, row.id) == ["max_age"]


def test_switching_the_connection_off_ends_its_launches(live_app: LiveApp, sandbox: SandboxStack) -> None:
    done = launch(sandbox, "pat-000015")
    assert requests.get(f"{live_app.url}/api/{done.handle}/follow-ups", timeout=20).status_code == 200
    database = Database(live_app.database_url)
    it = Actor(kind="admin", name="it-test", role="it_admin", connection_id=None)
    try:
        with database.session() as session:
            connections.set_enabled(session, now, it, "sandbox", False)
        refused = requests.post(f"{live_app.url}/api/{done.handle}/care-tickets", timeout=20,
                                json={"reason": "complaint", "description": "x"}, headers={"X-CSRF-Token": "any"})
        assert refused.status_code == 401 and refused.json()["error"] == "session_ended"
    finally:
        with database.session() as session:
            connections.set_enabled(session, now, it, "sandbox", True)
        database.dispose()
    assert stored(live_app, done.handle).failure_reason == "connection_disabled"
    assert requests.get(f"{live_app.url}/api/{done.handle}/follow-ups", timeout=20).status_code == 401, \
        "switched on again, an ended launch stays ended"


def test_what_the_ehr_did_not_grant_is_neither_shown_nor_done(live_app: LiveApp, sandbox: SandboxStack) -> None:
    """The EHR granted this user the patient's record but not their visits, bookings or Tasks (the user's own
    rights at the EHR): the sidebar says so where those would be, offers no ticket form, and a ticket asked of
    the API anyway is refused (403) and audited, though fhir-prm's own backend client could have written it."""
    sync_sandbox(live_app, sandbox, "Location", "Patient", "Encounter", "Appointment")
    done = launch(sandbox, "pat-000276")
    full = requests.get(f"{live_app.url}/app/{done.handle}/", timeout=20).text
    assert 'id="ticket-form"' in full and "not granted by the EHR" not in full
    row = stored(live_app, done.handle, scope="launch openid fhirUser online_access patient/Patient.rs")
    page = requests.get(f"{live_app.url}/app/{done.handle}/", timeout=20)
    assert page.status_code == 200 and "Jessica Green" in page.text
    for field in ("last-visit", "next-booking", "past-year"):
        assert f'id="{field}" class="muted not-granted">not granted by the EHR' in page.text, field
    assert 'id="ticket-form"' not in page.text and 'id="ticket-not-granted"' in page.text
    token = api_token(page.text)
    refused = requests.post(f"{live_app.url}/api/{done.handle}/care-tickets", headers={"X-CSRF-Token": token},
                            json={"reason": "complaint", "description": "x"}, timeout=20)
    assert refused.status_code == 403 and "patient/Task.c" in refused.json()["message"]
    database = Database(live_app.database_url)
    try:
        with database.session() as session:
            denied = session.exec(select(AuditRecord).where(col(AuditRecord.launch_id) == row.id,
                                                            AuditRecord.outcome == "denied")).all()
    finally:
        database.dispose()
    assert [(a.action, a.detail) for a in denied] == [("care_ticket.open", "not granted by the EHR: patient/Task.c")]
    listed = requests.get(f"{live_app.url}/api/{done.handle}/follow-ups", timeout=20).json()
    assert listed == {"tickets": None, "messages": None}, "Tasks and Communications not granted: not listed"


def test_ending_ones_own_session_needs_no_renewal_and_a_slow_renewal_ends_nothing(live_app: LiveApp,
                                                                                  sandbox: SandboxStack) -> None:
    """A renewal another request holds for longer than a request may wait (a refresher that died, a slow EHR)
    answers 503 and ends nothing; and ending one's own session never asks the EHR for a token first."""
    done = launch(sandbox, "pat-000019")
    end_token = re.search(r'name="csrf_token" value="([^"]+)"', done.response.text)
    assert end_token is not None
    stored(live_app, done.handle, expires_at=lambda row: row.completed_at - timedelta(seconds=1),
           refreshing_until=lambda row: row.completed_at + timedelta(days=1))
    busy = requests.get(f"{live_app.url}/api/{done.handle}/follow-ups", timeout=40)
    assert busy.status_code == 503 and busy.json()["error"] == "refresh_busy"
    assert stored(live_app, done.handle).status == "active", "a slow renewal is not the end of the launch"
    stored(live_app, done.handle, refresh_token_enc=None)  # renewing would now end it as token_expired
    ended = requests.post(f"{live_app.url}/app/{done.handle}/end", data={"csrf_token": end_token.group(1)},
                          timeout=20)
    assert ended.status_code == 200 and "Session ended" in ended.text
    assert stored(live_app, done.handle).failure_reason == "ended_by_user"
