"""The write-back page for IT over real HTTP against `prm serve`: what needs attention, retry, discard, CSRF, roles.

The rows live on a disabled connection of the app's database, so the app's own scheduler never drains them:
what a test sees is what the page and its buttons did, not a racing write to an EHR.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import sync_playwright
from sqlalchemy import func
from sqlmodel import col, select

from prm import outbox, outreach
from prm.audit import Actor
from prm.clock import clock_from_setting
from prm.db import Database
from prm.followup_models import OutreachMessageCreate
from prm.models import AuditRecord, Connection, OutboxRow
from smart_app import csrf
from tests.integration.conftest import LiveApp
from tests.integration.test_admin_pages import CHROMIUM, CHROMIUM_ARGS, PASSWORD, Admin, rows, signed_in
from tests.support.settings import DATASET_NOW, TEST_SECRET

WARD = "outbox-ward"
CANARY = "CANARY-message-text-never-on-the-admin-page"
clock = clock_from_setting(DATASET_NOW)  # the app's clock (PRM_NOW)


@pytest.fixture(scope="module")
def accounts(live_app: LiveApp) -> dict[str, str]:
    made = {"it_admin": "outbox.it", "practice_manager": "outbox.pm"}
    for role, username in made.items():
        done = live_app.prm("admin", "add", username, "--role", role, stdin=f"{PASSWORD}\n")
        assert done.returncode == 0 or "exists already" in done.stderr, done.stderr
    return made


@dataclass
class Ward:
    id: int
    message_source: str  # an outreach message of this connection: its text is patient data


@pytest.fixture(scope="module")
def ward(live_app: LiveApp) -> Ward:
    """A connection of the app, disabled (write-back never drains it, so retried rows stay pending), with one
    outreach message whose text must never reach the write-back page."""
    done = live_app.prm("connection", "add", "--name", WARD, "--iss", "https://outbox-ward.example/fhir",
                        "--client-id", "prm-ward", "--clinic", "Organization/org-ward=Europe/London", "--disabled")
    assert done.returncode == 0, done.stderr
    db = Database(live_app.database_url)
    try:
        with db.session() as session:
            connection = session.exec(select(Connection).where(Connection.name == WARD)).one()
            assert connection.id is not None and not connection.enabled
            message, _ = outreach.record_message(
                session, clock, connection,
                OutreachMessageCreate(patient_id="pat-ward-1", channel="sms", purpose="reminder", text=CANARY,
                                      business_key="outreach/admin-page-canary"),
                Actor(kind="admin", name="test", role="it_admin"))
            source = outreach.source_of(message)
            row = session.exec(select(OutboxRow).where(OutboxRow.source == source)).one()
            outbox.settle_failed(row, clock(), "EHR answered 500", retry_in_s=0, max_attempts=1,
                                 outcome_unknown=False)  # dead, so the drain job it woke finds nothing to do
            session.add(row)
            return Ward(connection.id, source)
    finally:
        db.dispose()


@dataclass
class Made:
    dead: int
    kept: int
    duplicates: int
    fallback: int
    done: int
    pending: int


@pytest.fixture
def made(live_app: LiveApp, ward: Ward) -> Made:
    """Fresh outbox rows in each state the page cares about (and two it must leave out)."""
    tag = uuid.uuid4().hex[:8]
    db = Database(live_app.database_url)
    try:
        with db.session() as session:
            ids: dict[str, int] = {}
            for state in ("dead", "kept", "duplicates", "fallback", "done", "pending"):
                dead = state == "dead"  # mirrors the outreach message: the text must stay off the page
                row = outbox.add(session, clock, connection_id=ward.id,
                                 resource_type="Communication" if dead else "Task",
                                 source=ward.message_source if dead else f"care_ticket:{tag}-{state}",
                                 identifier_value=f"admin-page/{tag}-{state}")
                now = clock()
                if state == "dead":
                    outbox.settle_failed(row, now, "EHR answered 503: try later", retry_in_s=60, max_attempts=1,
                                         outcome_unknown=False)
                elif state == "kept":
                    outbox.settle_kept(row, now, "Task: 403 Forbidden; Communication: 403 Forbidden")
                elif state != "pending":
                    written = "Communication" if state == "fallback" else "Task"
                    outbox.settle_written(row, now, fhir_id=f"{state}-{tag}", version_id="1", written_type=written,
                                          revision=row.revision)
                    if state == "fallback":
                        row.degraded_reason = "Task: 403 Forbidden"
                    if state == "duplicates":
                        row.duplicates = [f"Task/copy-{tag}-1", f"Task/copy-{tag}-2"]
                session.add(row)
                session.flush()
                ids[state] = row.id or 0
    finally:
        db.dispose()
    return Made(**ids)


def outbox_row(app: LiveApp, row_id: int) -> OutboxRow:
    [row] = rows(app, OutboxRow, OutboxRow.id == row_id)
    return row


def audits(app: LiveApp, row_id: int) -> list[AuditRecord]:
    return rows(app, AuditRecord, AuditRecord.entity == f"outbox_row:{row_id}")


def form_token(page: str, row_id: int, action: str) -> str:
    found = re.search(rf'action="/admin/outbox/{row_id}/{action}" class="inline">\s*'
                      r'<input type="hidden" name="csrf_token" value="([^"]*)"', page)
    assert found, f"no {action} form for row {row_id}"
    return found.group(1)


def listed(page: str, row_id: int) -> str | None:
    """The status the page lists a row with, or None when it is not listed."""
    found = re.search(rf'<tr data-row="{row_id}" data-status="([a-z_]+)">', page)
    return found.group(1) if found else None


def test_the_page_lists_what_needs_attention_and_nothing_of_the_contents(live_app: LiveApp, made: Made, ward: Ward,
                                                                         accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    assert 'href="/admin/outbox"' in admin.get("/admin/connections").text  # in the navigation
    page = admin.get("/admin/outbox")
    assert page.status_code == 200, page.text[:500]
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store" and "style=" not in page.text
    text = page.text
    assert listed(text, made.dead) == "dead" and listed(text, made.kept) == "kept"
    assert listed(text, made.duplicates) == "done" and listed(text, made.fallback) == "done"
    assert listed(text, made.done) is None and listed(text, made.pending) is None
    assert "EHR answered 503: try later" in text and "Task: 403 Forbidden; Communication: 403 Forbidden" in text
    assert "<code>Communication/fallback-" in text and "Task/copy-" in text
    for row_id in (made.dead, made.kept):  # dead and kept rows have both buttons, the others none
        assert f'id="retry-{row_id}"' in text and f'id="discard-{row_id}"' in text
    for row_id in (made.duplicates, made.fallback):
        assert f'id="retry-{row_id}"' not in text and f'id="discard-{row_id}"' not in text
    assert CANARY not in text and "pat-ward-1" not in text  # ids, types, statuses and errors only
    assert "admin-page/" not in text  # nor the business identifier
    # Per connection counts by status, as the database has them.
    counted = _counts(live_app, ward.id)
    ward_row = re.search(rf'<tr data-connection="{WARD}">(.*?)</tr>', text, re.S)
    assert ward_row, "no counts for the connection"
    shown = dict(re.findall(r'<td data-status="([a-z_]+)"[^>]*>(\d+)</td>', ward_row.group(1)))
    assert {status: int(n) for status, n in shown.items() if int(n)} == counted
    assert 'data-connection="sandbox"' in text  # every connection, with or without writes


def _counts(app: LiveApp, connection_id: int) -> dict[str, int]:
    db = Database(app.database_url)
    try:
        with db.session() as session:
            query = (select(OutboxRow.status, func.count()).where(OutboxRow.connection_id == connection_id)
                     .group_by(col(OutboxRow.status)))
            return {status: n for status, n in session.exec(query)}
    finally:
        db.dispose()


def test_retry_makes_a_dead_row_pending_and_is_audited(live_app: LiveApp, made: Made,
                                                       accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    before = outbox_row(live_app, made.dead)
    assert before.status == "dead" and before.attempts == 1
    token = form_token(admin.get("/admin/outbox").text, made.dead, "retry")
    response = admin.post(f"/admin/outbox/{made.dead}/retry", {"csrf_token": token})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/admin/outbox?done=retried&row={made.dead}")
    after = outbox_row(live_app, made.dead)
    assert after.status == "pending" and after.attempts == 0 and after.last_error == before.last_error
    [record] = audits(live_app, made.dead)
    assert record.action == "outbox.retry" and record.outcome == "success" and record.actor_kind == "admin"
    assert record.actor == accounts["it_admin"] and record.role == "it_admin"
    assert record.connection_id == after.connection_id and record.detail == after.source
    page = admin.get(response.headers["Location"].removeprefix(live_app.url)).text
    assert f"Row {made.dead} will be written again" in page and listed(page, made.dead) is None
    # A second click (or a colleague's) finds it pending: nothing changes, nothing more is audited.
    again = admin.post(f"/admin/outbox/{made.dead}/retry", {"csrf_token": token})
    assert again.status_code == 303 and "done=unchanged" in again.headers["Location"]
    assert outbox_row(live_app, made.dead).status == "pending" and len(audits(live_app, made.dead)) == 1
    assert "no longer dead or kept" in admin.get(again.headers["Location"].removeprefix(live_app.url)).text


def test_discard_a_kept_row(live_app: LiveApp, made: Made, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    token = form_token(admin.get("/admin/outbox").text, made.kept, "discard")
    response = admin.post(f"/admin/outbox/{made.kept}/discard", {"csrf_token": token})
    assert response.status_code == 303 and "done=discarded" in response.headers["Location"]
    row = outbox_row(live_app, made.kept)
    assert row.status == "discarded" and row.degraded_reason  # kept on record, with its reason
    [record] = audits(live_app, made.kept)
    assert record.action == "outbox.discard" and record.actor == accounts["it_admin"]
    assert listed(admin.get("/admin/outbox").text, made.kept) is None
    # Only dead or kept rows can be discarded: a done one is left alone.
    token = form_token(admin.get("/admin/outbox").text, made.dead, "discard")
    refused = admin.post(f"/admin/outbox/{made.duplicates}/discard", {"csrf_token": token})
    assert refused.status_code == 303 and "done=unchanged" in refused.headers["Location"]
    assert outbox_row(live_app, made.duplicates).status == "done" and audits(live_app, made.duplicates) == []
    assert admin.post("/admin/outbox/999999999/discard", {"csrf_token": token}).status_code == 404


def test_missing_or_wrong_csrf_is_refused_and_changes_nothing(live_app: LiveApp, made: Made,
                                                             accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    other = signed_in(live_app, accounts["it_admin"])  # the same person in another session
    page = admin.get("/admin/outbox").text
    discard_token = form_token(page, made.dead, "discard")  # this session, but for the other button
    foreign = form_token(other.get("/admin/outbox").text, made.dead, "retry")
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "forged"}, {"csrf_token": discard_token},
                 {"csrf_token": foreign}):
        response = admin.post(f"/admin/outbox/{made.dead}/retry", data)
        assert response.status_code == 400 and 'id="problem"' in response.text, data
    refused = admin.post(f"/admin/outbox/{made.kept}/discard", {"csrf_token": foreign})
    assert refused.status_code == 400
    assert outbox_row(live_app, made.dead).status == "dead" and outbox_row(live_app, made.dead).attempts == 1
    assert outbox_row(live_app, made.kept).status == "kept"
    assert audits(live_app, made.dead) == [] and audits(live_app, made.kept) == []


def test_practice_manager_may_view_but_not_retry_or_discard(live_app: LiveApp, made: Made,
                                                            accounts: dict[str, str]) -> None:
    manager = signed_in(live_app, accounts["practice_manager"])
    page = manager.get("/admin/outbox")
    assert page.status_code == 200 and listed(page.text, made.dead) == "dead"
    assert f'id="retry-{made.dead}"' not in page.text and "/retry" not in page.text and "/discard" not in page.text
    # Even with a valid CSRF token (the page offers none, so mint one for this session), the role decides.
    session_hash = hashlib.sha256(manager.cookies["prm_admin"].encode()).hexdigest()
    for action, row_id in (("retry", made.dead), ("discard", made.kept)):
        token = csrf.issue(TEST_SECRET, session_hash, f"admin.outbox_{action}")
        response = manager.post(f"/admin/outbox/{row_id}/{action}", {"csrf_token": token})
        assert response.status_code == 403 and 'id="denied"' in response.text
    assert outbox_row(live_app, made.dead).status == "dead" and outbox_row(live_app, made.kept).status == "kept"
    assert audits(live_app, made.dead) == [] and audits(live_app, made.kept) == []
    denied = rows(live_app, AuditRecord, AuditRecord.outcome == "denied",
                  AuditRecord.actor == accounts["practice_manager"], AuditRecord.action == "outbox.manage")
    assert len(denied) >= 2


def test_the_page_needs_a_sign_in(live_app: LiveApp, made: Made) -> None:
    anonymous = Admin(live_app.url)
    response = anonymous.get("/admin/outbox")
    assert response.status_code == 303 and "/admin/sign-in" in response.headers["Location"]
    assert anonymous.post(f"/admin/outbox/{made.dead}/retry", {}).status_code == 303
    assert outbox_row(live_app, made.dead).status == "dead"


@pytest.fixture
def chromium() -> Iterator[Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.browser
def test_in_chromium_retry_a_dead_row(chromium: Any, live_app: LiveApp, made: Made,
                                      accounts: dict[str, str]) -> None:
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(f"{live_app.url}/admin/outbox")
    page.fill("#username", accounts["it_admin"])
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url("**/admin/outbox")
    page.click(f"#retry-{made.dead}")
    page.wait_for_url(f"**/admin/outbox?done=retried&row={made.dead}")
    assert page.locator("#outbox-notice").inner_text().startswith(f"Row {made.dead} will be written again")
    assert page.locator(f'tr[data-row="{made.dead}"]').count() == 0
    assert outbox_row(live_app, made.dead).status == "pending" and blocked == []
    context.close()
