"""The sidebar's JSON API on the live app: care tickets and outreach for the patient in context, by launch
handle and CSRF header only (no cookies), permission-checked, audited, idempotent by key."""

from __future__ import annotations

import json
import re
import sqlite3

import requests

from ehr_sandbox.stack import SandboxStack
from tests.integration.conftest import IT_ADMIN_USER, LiveApp
from tests.integration.launch_helpers import api_token, launch

PATIENT = "pat-000037"


def rows(app: LiveApp, query: str, *args: object) -> list[tuple[object, ...]]:
    with sqlite3.connect(app.database_url.removeprefix("sqlite:///")) as db:
        return list(db.execute(query, args))


def test_a_clinician_opens_a_ticket_and_records_a_message(sandbox: SandboxStack, live_app: LiveApp) -> None:
    done = launch(sandbox, PATIENT)
    handle, token = done.handle, api_token(done.response.text)
    base = f"{live_app.url}/api/{handle}"
    body = {"reason": "callback-request", "description": "Call back about moving Thursday's appointment",
            "priority": "urgent", "key": "sidebar/test-api-1"}
    first = requests.post(f"{base}/care-tickets", json=body, headers={"X-CSRF-Token": token}, timeout=20)
    assert first.status_code == 201, first.text
    ticket = first.json()
    assert ticket["created"] and ticket["status"] == "open" and ticket["priority"] == "urgent"
    again = requests.post(f"{base}/care-tickets", json=body, headers={"X-CSRF-Token": token}, timeout=20)
    assert again.status_code == 200 and again.json()["id"] == ticket["id"] and not again.json()["created"]

    other = launch(sandbox, "pat-000038")  # the same key in another patient's launch: refused, nothing told
    replayed = requests.post(f"{live_app.url}/api/{other.handle}/care-tickets", json=body, timeout=20,
                             headers={"X-CSRF-Token": api_token(other.response.text)})
    assert replayed.status_code == 409 and body["description"] not in replayed.text, replayed.text
    [(patient, key)] = rows(live_app, "SELECT patient_id, business_key FROM care_ticket WHERE id = ?", ticket["id"])
    assert (patient, key) == (PATIENT, "sidebar/test-api-1")  # the patient in context, never one from the body
    [(status, kind)] = rows(live_app, "SELECT status, resource_type FROM outbox_row WHERE identifier_value = ?", key)
    assert kind == "Task" and status in ("pending", "in_flight", "done", "dead")
    audits = rows(live_app, "SELECT action, actor_kind, patient_id FROM audit_record WHERE entity = ?",
                  f"care_ticket:{ticket['id']}")
    assert audits == [("care_ticket.open", "user", PATIENT)]  # once, though the call came twice

    message = requests.post(f"{base}/outreach-messages", headers={"X-CSRF-Token": token}, timeout=20, json={
        "channel": "phone", "purpose": "follow-up", "text": "Called to check on recovery after the extraction."})
    assert message.status_code == 201 and message.json()["status"] == "sent"

    listed = requests.get(f"{base}/follow-ups", timeout=20).json()
    assert ticket["id"] in [t["id"] for t in listed["tickets"]]
    assert message.json()["id"] in [m["id"] for m in listed["messages"]]


def test_bad_calls_are_refused_and_change_nothing(sandbox: SandboxStack, live_app: LiveApp) -> None:
    done = launch(sandbox, PATIENT)
    base, token = f"{live_app.url}/api/{done.handle}", api_token(done.response.text)
    before = rows(live_app, "SELECT count(*) FROM care_ticket")
    good = {"reason": "complaint", "description": "Patient unhappy with the bill"}
    no_csrf = requests.post(f"{base}/care-tickets", json=good, timeout=20)
    assert no_csrf.status_code == 400 and "CSRF" in no_csrf.json()["message"]
    other = launch(sandbox, "pat-000038")
    wrong_handle = requests.post(f"{base}/care-tickets", json=good, timeout=20,
                                 headers={"X-CSRF-Token": api_token(other.response.text)})
    assert wrong_handle.status_code == 400
    for bad in ({"reason": "gossip", "description": "x"}, {"reason": "complaint"},
                {"reason": "complaint", "description": "x", "patient_id": "pat-000001"},
                {"reason": "complaint", "description": "x", "due_at": "tomorrow"}):
        refused = requests.post(f"{base}/care-tickets", json=bad, headers={"X-CSRF-Token": token}, timeout=20)
        assert refused.status_code == 400, (bad, refused.text)
        assert refused.json()["error"] == "invalid"
    not_json = requests.post(f"{base}/care-tickets", data="reason=complaint", timeout=20,
                             headers={"X-CSRF-Token": token, "Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 400
    assert rows(live_app, "SELECT count(*) FROM care_ticket") == before


def test_a_role_without_the_action_is_refused_and_audited(sandbox: SandboxStack, live_app: LiveApp) -> None:
    done = launch(sandbox, PATIENT, user=IT_ADMIN_USER)  # mapped to it_admin, who opens no tickets
    refused = requests.post(f"{live_app.url}/api/{done.handle}/care-tickets", timeout=20,
                            headers={"X-CSRF-Token": api_token(done.response.text)},
                            json={"reason": "complaint", "description": "x"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    denied = rows(live_app, "SELECT outcome FROM audit_record WHERE action = 'care_ticket.open' AND actor LIKE ?",
                  f"%{IT_ADMIN_USER}")
    assert ("denied",) in denied


def test_an_ended_launch_gets_json_not_a_page(sandbox: SandboxStack, live_app: LiveApp) -> None:
    done = launch(sandbox, PATIENT)
    token = api_token(done.response.text)
    end = re.search(r'name="csrf_token" value="([^"]+)"', done.response.text)
    assert end
    requests.post(f"{live_app.url}/app/{done.handle}/end", data={"csrf_token": end.group(1)}, timeout=20)
    after = requests.post(f"{live_app.url}/api/{done.handle}/care-tickets", headers={"X-CSRF-Token": token},
                          json={"reason": "complaint", "description": "x"}, timeout=20)
    assert after.status_code == 401 and json.loads(after.text)["error"] == "session_ended"
