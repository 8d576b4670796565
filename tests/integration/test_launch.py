"""SMART EHR launch against the sandbox over real HTTP: the sidebar shows the patient, read live until the sync
has them and from fhir-prm's snapshot after, audited."""

from __future__ import annotations

import copy
import html
import http.server
import re
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlmodel import select

from ehr_sandbox.stack import SandboxStack
from prm.db import Database
from prm.models import AuditRecord, Launch
from tests.integration.conftest import IT_ADMIN_USER, LiveApp, sync_sandbox
from tests.integration.launch_helpers import launch, sidebar_launch_url, stop_before_callback
from tests.support.processes import wait_until
from tests.support.settings import DATASET_NOW


def audit_rows(app: LiveApp) -> list[AuditRecord]:
    db = Database(app.database_url)
    try:
        with db.session() as session:
            return list(session.exec(select(AuditRecord).order_by(AuditRecord.id)))  # type: ignore[arg-type]
    finally:
        db.dispose()


def test_ehr_launch_shows_the_patient_read_live(live_app: LiveApp, sandbox: SandboxStack) -> None:
    result = launch(sandbox, "pat-000001")
    assert result.response.status_code == 200, result.response.text[:500]
    assert "Oliver Bennett" in result.response.text
    assert "1980-03-16" in result.response.text
    # The EHR saw a proper authorize request: code flow, PKCE S256, aud = iss, state, launch.
    authorize = next(u for u in result.urls if "/authorize" in u)
    query = parse_qs(urlsplit(authorize).query)
    assert query["response_type"] == ["code"] and query["code_challenge_method"] == ["S256"]
    assert query["aud"] == [sandbox.iss] and len(query["state"][0]) >= 22 and query["launch"]
    assert query["redirect_uri"] == [f"{live_app.url}/launch/callback"]
    assert "code_verifier" not in authorize


def test_no_phi_in_app_urls_and_pages_are_not_cached(live_app: LiveApp, sandbox: SandboxStack) -> None:
    result = launch(sandbox, "pat-000002")
    app_urls = [u for u in result.urls if u.startswith(live_app.url)]
    assert app_urls and all("pat-000002" not in urlsplit(u).path + urlsplit(u).query for u in app_urls[1:])
    headers = result.response.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert f"frame-ancestors {sandbox.ehr_url}" in headers["Content-Security-Policy"]
    assert "Set-Cookie" not in headers
    assert all("Set-Cookie" not in r.headers for r in result.response.history if r.url.startswith(live_app.url))


def test_launch_and_read_are_audited_once_each(live_app: LiveApp, sandbox: SandboxStack) -> None:
    before = len(audit_rows(live_app))
    launch(sandbox, "pat-000003")
    rows = audit_rows(live_app)[before:]
    assert [(r.action, r.patient_id, r.outcome, r.actor_kind) for r in rows] == [
        ("launch.complete", "pat-000003", "success", "user"),
        ("patient.read", "pat-000003", "success", "user"),
    ]
    assert rows[1].actor == f"{sandbox.iss}/Practitioner/prac-rdc-01" and rows[1].role == "clinician"


def test_a_role_without_the_action_is_denied_and_audited(live_app: LiveApp, sandbox: SandboxStack) -> None:
    clinician = launch(sandbox, "pat-000004")
    denied = requests.get(f"{live_app.url}/app/{clinician.handle}/connections", timeout=10)
    assert denied.status_code == 403 and "Not available to your role" in denied.text
    assert audit_rows(live_app)[-1].outcome == "denied"
    admin = launch(sandbox, "pat-000004", user=IT_ADMIN_USER)
    allowed = requests.get(f"{live_app.url}/app/{admin.handle}/connections", timeout=10)
    assert allowed.status_code == 200 and "sandbox" in allowed.text


def test_a_callback_is_used_once(live_app: LiveApp, sandbox: SandboxStack) -> None:
    callback = stop_before_callback(sandbox, "pat-000005")
    first = requests.get(callback, allow_redirects=False, timeout=20)
    assert first.status_code == 303
    replay = requests.get(callback, allow_redirects=False, timeout=20)
    assert replay.status_code == 400 and 'data-reason="unknown_state"' in replay.text


def test_missing_or_forged_state_is_refused(live_app: LiveApp) -> None:
    """Refused, and audited: a forged or replayed answer is what an attack looks like."""
    seen = len(audit_rows(live_app))
    missing = requests.get(f"{live_app.url}/launch/callback?code=abc", timeout=10)
    assert missing.status_code == 400 and 'data-reason="missing_state"' in missing.text
    forged = requests.get(f"{live_app.url}/launch/callback?code=abc&state=forged", timeout=10)
    assert forged.status_code == 400 and 'data-reason="unknown_state"' in forged.text
    refused = [(r.action, r.outcome, r.detail) for r in audit_rows(live_app)[seen:] if r.action == "launch.complete"]
    assert refused == [("launch.complete", "failure", "missing_state"), ("launch.complete", "failure", "unknown_state")]


def test_user_denial_ends_on_a_friendly_page(live_app: LiveApp, sandbox: SandboxStack) -> None:
    callback = stop_before_callback(sandbox, "pat-000006")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    page = requests.get(f"{live_app.url}/launch/callback?error=access_denied&state={state}", timeout=10)
    assert page.status_code == 403 and "Access was not granted" in page.text
    db = Database(live_app.database_url)
    with db.session() as session:
        failed = session.exec(select(Launch).where(Launch.failure_reason == "access_denied")).all()
    db.dispose()
    assert failed


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def recorder() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.hits = []
    yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    server.shutdown()


def test_unknown_iss_gets_a_clear_page_and_no_outbound_request(live_app: LiveApp, recorder: str) -> None:
    page = requests.get(f"{live_app.url}/launch", params={"iss": recorder, "launch": "x"}, timeout=10)
    assert page.status_code == 400 and "This EHR is not connected" in page.text
    assert _Recorder.hits == []


def test_launch_parameters_are_never_reflected_as_markup(live_app: LiveApp) -> None:
    evil = '"><script>alert(1)</script>'
    page = requests.get(f"{live_app.url}/launch", params={"iss": evil, "launch": evil}, timeout=10)
    assert page.status_code == 400 and "<script>alert(1)" not in page.text


def test_the_embedded_worker_checks_connection_health(live_app: LiveApp, sandbox: SandboxStack) -> None:
    def healthy() -> bool:
        listed = live_app.prm("connection", "list")
        return listed.returncode == 0 and " ok " in listed.stdout

    wait_until(healthy, timeout_s=30, what="sandbox connection health ok")
    shown = live_app.prm("connection", "show", "sandbox")
    assert '"discovery"' in shown.stdout and '"fhirVersion": "4.0.1"' in shown.stdout
    assert sidebar_launch_url(sandbox, "pat-000001").startswith(live_app.url)


def test_an_ehr_that_is_down_ends_on_a_friendly_page_and_is_audited(live_app: LiveApp) -> None:
    from tests.support.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}/fhir"
    added = live_app.prm("connection", "add", "--name", "down-ehr", "--iss", dead, "--client-id", "fhir-prm")
    assert added.returncode == 0, added.stderr
    page = requests.get(f"{live_app.url}/launch", params={"iss": dead, "launch": "x"}, timeout=30)
    assert page.status_code == 502 and "The EHR could not be reached" in page.text
    last = audit_rows(live_app)[-1]
    assert (last.action, last.outcome, last.detail) == ("launch.start", "failure", "ehr_unreachable")


def test_logs_carry_no_tokens_and_no_patient_data(live_app: LiveApp, sandbox: SandboxStack) -> None:
    launch(sandbox, "pat-000001")
    log = live_app.process.log_path.read_text(errors="replace")
    issued = list(sandbox.ehr.smart.store.by_access)
    assert issued and not any(token in log for token in issued)
    assert not re.search(r"Bearer [A-Za-z0-9._~+/-]{16,}", log)  # no bearer token value, only source lines
    assert "Oliver" not in log and "Bennett" not in log and "1980-03-16" not in log


def _fhir_search(sandbox: SandboxStack, query: str) -> list[dict[str, Any]]:
    """The FHIR server's own answer (behind the EHR's proxy): the oracle the snapshot is compared with."""
    bundle = requests.get(f"{sandbox.fhir_internal_url}/{query}&_count=1000", timeout=30).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


def _shown(page: str, field_id: str) -> str:
    """A Visits entry as one line: its parts (when, what for, where: a line each on the page) joined by ` · `."""
    match = re.search(rf'<dd id="{field_id}"[^>]*>(.*?)</dd>', page, re.S)
    assert match, f"#{field_id} on the sidebar"
    parts = re.findall(r"<span[^>]*>(.*?)</span>", match.group(1), re.S) or [match.group(1)]
    return " · ".join(html.unescape(part).strip() for part in parts)


def test_a_synced_patient_opens_from_the_snapshot_with_visits_and_bookings(live_app: LiveApp,
                                                                           sandbox: SandboxStack) -> None:
    """Once the sync has the patient, the sidebar shows fhir-prm's copy, audited as such: the last visit and the
    next booking as the FHIR server has them, in the clinic's time; a booking made at the EHR shows after the
    next sync."""
    overview_types = ("Location", "Patient", "Encounter", "Appointment")
    sync_sandbox(live_app, sandbox, *overview_types)
    now = datetime.fromisoformat(DATASET_NOW)
    came = [e for e in _fhir_search(sandbox, "Encounter?subject=Patient/pat-000276")
            if e["status"] == "finished" and datetime.fromisoformat(e["period"]["start"]) <= now]
    last = max(came, key=lambda e: datetime.fromisoformat(e["period"]["start"]))
    place = requests.get(f"{sandbox.fhir_internal_url}/{last['location'][0]['location']['reference']}",
                         timeout=30).json()["name"]
    page = launch(sandbox, "pat-000276").response.text
    assert "Jessica Green" in page and "From fhir-prm's copy of the EHR, synced" in html.unescape(page)
    when = datetime.fromisoformat(last["period"]["start"]).strftime("%a %d %b %Y, %H:%M")
    assert _shown(page, "last-visit") == f"{when} · {last['type'][0]['text']} · {place}"
    assert audit_rows(live_app)[-1].detail == "from the snapshot"

    [made] = [a for a in _fhir_search(sandbox, "Appointment?patient=Patient/pat-000276") if a["status"] == "pending"]
    booked = copy.deepcopy(made)
    booked.update(id="appt-sidebar-booked", status="booked", start="2026-11-24T10:15:00-05:00",
                  end="2026-11-24T10:45:00-05:00")
    booked.pop("meta", None)
    requests.put(f"{sandbox.fhir_internal_url}/Appointment/appt-sidebar-booked", json=booked,
                 timeout=30).raise_for_status()
    assert _shown(page, "next-booking").startswith("Wed 17 Mar 2027, 09:30")  # the one booked before
    sync_sandbox(live_app, sandbox, *overview_types)
    again = launch(sandbox, "pat-000276").response.text
    assert _shown(again, "next-booking").startswith("Tue 24 Nov 2026, 10:15 · ")
