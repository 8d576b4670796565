"""Admin pages over real HTTP against `prm serve`: sign-in, CSRF, roles, connection forms, and one real browser."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col, select

from ehr_sandbox.stack import SandboxStack
from fhir_mappings.patient import patient_record_from_patient
from prm import audit, connections, leases, snapshots, streams
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import AuditRecord, Connection, Job, SigningKey
from prm.snapshot_models import PatientRecord, SyncStream
from smart_app import csrf
from tests.integration.conftest import LiveApp, give_backend_access, sync_sandbox
from tests.support.processes import wait_until
from tests.support.settings import METRICS_TOKEN, TEST_KEY, TEST_SECRET
from workers.sync import SYNC_STREAM

PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
DATA = Path(__file__).resolve().parents[2] / "ehr_sandbox" / "data" / "sandbox"


@dataclass
class Admin:
    """A browser stand-in: keeps the app's cookies itself, because `requests` never sends Secure cookies over http."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)
    set_cookies: list[SimpleCookie] = field(default_factory=list)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        response = requests.request(method, self.base + path, headers=headers, allow_redirects=False, timeout=30,
                                    **kwargs)
        for raw in response.raw.headers.getlist("Set-Cookie"):
            parsed = SimpleCookie()
            parsed.load(raw)
            self.set_cookies.append(parsed)
            for name, morsel in parsed.items():
                if morsel.value and morsel["max-age"] != "0":
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        return response

    def get(self, path: str) -> requests.Response:
        return self.request("GET", path)

    def post(self, path: str, data: dict[str, str]) -> requests.Response:
        return self.request("POST", path, data=data)

    def csrf(self, page_path: str, index: int = -1) -> str:
        page = self.get(page_path)
        assert page.status_code == 200, page.text[:300]
        return _CSRF.findall(page.text)[index]

    def sign_in(self, username: str, password: str = PASSWORD) -> requests.Response:
        token = self.csrf("/admin/sign-in")
        return self.post("/admin/sign-in", {"csrf_token": token, "username": username, "password": password})


@pytest.fixture(scope="module")
def accounts(live_app: LiveApp) -> dict[str, str]:
    made = {"it_admin": "pages.it", "practice_manager": "pages.pm", "it_admin_2": "pages.it2"}
    for role, username in made.items():
        done = live_app.prm("admin", "add", username, "--role", role.removesuffix("_2"), stdin=f"{PASSWORD}\n")
        assert done.returncode == 0 or "exists already" in done.stderr, done.stderr
    return made


def signed_in(live_app: LiveApp, username: str) -> Admin:
    admin = Admin(live_app.url)
    response = admin.sign_in(username)
    assert response.status_code == 303, response.text[:500]
    assert "prm_admin" in admin.cookies
    return admin


def rows(app: LiveApp, model: Any, *where: Any) -> list[Any]:
    db = Database(app.database_url)
    try:
        with db.session() as session:
            return list(session.exec(select(model).where(*where)))
    finally:
        db.dispose()


def connection(app: LiveApp, name: str) -> Connection | None:
    found = rows(app, Connection, Connection.name == name)
    return found[0] if found else None


def form(name: str, iss: str, **extra: str) -> dict[str, str]:
    values = {"name": name, "iss": iss, "client_id": "prm-web", "client_auth": "public", "scopes": "launch openid",
              "frame_origins": "https://ehr.example.org", "role_mapping": "Practitioner=clinician",
              "default_role": "front_desk", "clinics": "Organization/org-1 | Riverside | Europe/London",
              "signing_alg": "RS384", "backend_client_id": "", "backend_auth": "", "backend_scopes": "",
              "enabled": "on"}
    values.update(extra)
    return values


def add(admin: Admin, values: dict[str, str]) -> requests.Response:
    return admin.post("/admin/connections/new", {**values, "csrf_token": admin.csrf("/admin/connections/new")})


def test_pages_need_a_sign_in(live_app: LiveApp) -> None:
    anonymous = Admin(live_app.url)
    for path in ("/admin/", "/admin/connections", "/admin/connections/sandbox", "/admin/connections/new"):
        response = anonymous.get(path)
        assert response.status_code == 303 and "/admin/sign-in" in response.headers["Location"], path
    anonymous.cookies["prm_admin"] = "made-up-token"
    assert anonymous.get("/admin/connections").status_code == 303
    assert anonymous.post("/admin/connections/sandbox/disable", {}).status_code == 303
    sign_in_page = anonymous.get("/admin/sign-in")
    assert "frame-ancestors 'none'" in sign_in_page.headers["Content-Security-Policy"]
    assert sign_in_page.headers["Cache-Control"] == "no-store"
    assert "style=" not in sign_in_page.text and "<script" not in sign_in_page.text


def test_sign_in_sets_a_strict_host_only_cookie(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = Admin(live_app.url)
    response = admin.sign_in(accounts["it_admin"])
    assert response.status_code == 303 and response.headers["Location"].endswith("/admin/connections")
    morsel = next(c["prm_admin"] for c in admin.set_cookies if "prm_admin" in c)
    assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Strict" and morsel["path"] == "/admin"
    assert len(morsel.value) >= 43
    page = admin.get("/admin/connections")
    assert page.status_code == 200 and 'data-name="sandbox"' in page.text
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"


def test_wrong_password_is_refused_generically_and_audited(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = Admin(live_app.url)
    wrong = admin.sign_in(accounts["it_admin_2"], "not my password at all")
    unknown = admin.sign_in("no.such.admin", "not my password at all")
    for response in (wrong, unknown):
        assert response.status_code == 401 and "wrong username or password" in response.text
        assert "prm_admin" not in admin.cookies
    failures = rows(live_app, AuditRecord, AuditRecord.action == "admin.sign_in", AuditRecord.outcome == "failure",
                    AuditRecord.actor == accounts["it_admin_2"])
    assert failures and all("not my password" not in (r.detail or "") for r in failures)
    assert "from 127.0.0.1" in (failures[-1].detail or "")


def test_sign_in_form_needs_its_own_csrf_cookie(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = Admin(live_app.url)
    token = admin.csrf("/admin/sign-in")
    admin.cookies.pop("prm_admin_pre")
    response = admin.post("/admin/sign-in", {"csrf_token": token, "username": accounts["it_admin"],
                                             "password": PASSWORD})
    assert response.status_code == 400 and "prm_admin" not in admin.cookies


def test_add_a_connection_through_the_form(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    values = form("riverside", "https://riverside.example/fhir", client_auth="client_secret",
                  client_secret="riverside-secret-value")
    response = add(admin, values)
    assert response.status_code == 303, response.text[-1500:]
    assert response.headers["Location"].endswith("/admin/connections/riverside")
    row = connection(live_app, "riverside")
    assert row is not None and row.enabled and row.iss == "https://riverside.example/fhir"
    assert row.clinics == [{"organization": "Organization/org-1", "name": "Riverside", "timezone": "Europe/London"}]
    assert row.role_mapping == {"Practitioner": "clinician"} and row.default_role == "front_desk"
    assert SecretBox((TEST_KEY,)).open(row.client_secret_enc) == "riverside-secret-value"
    detail = admin.get("/admin/connections/riverside")
    assert detail.status_code == 200 and "riverside-secret-value" not in detail.text
    assert '<dd id="client-secret">(set)</dd>' in detail.text and "Europe/London" in detail.text
    assert "https://ehr.example.org" in detail.text and "not checked" in detail.text
    [record] = rows(live_app, AuditRecord, AuditRecord.action == "connection.add", AuditRecord.connection_id == row.id)
    assert record.actor == accounts["it_admin"] and record.actor_kind == "admin" and record.role == "it_admin"


def test_a_connection_whose_backend_signs_gets_its_key_from_the_form(live_app: LiveApp,
                                                                     accounts: dict[str, str]) -> None:
    """private_key_jwt for the backend client: the form makes the signing key (as `prm connection add` does), or
    the sync could never get a token; a changed algorithm rotates it."""
    admin = signed_in(live_app, accounts["it_admin"])
    values = form("keyed", "https://keyed.example/fhir", backend_client_id="prm-backend",
                  backend_auth="private_key_jwt", backend_scopes="system/Patient.rs")
    assert add(admin, values).status_code == 303
    row = connection(live_app, "keyed")
    assert row is not None
    [first] = rows(live_app, SigningKey, SigningKey.connection_id == row.id, SigningKey.status == "active")
    assert first.alg == "RS384"
    edited = admin.post("/admin/connections/keyed/edit", {**values, "signing_alg": "ES384",
                                                           "csrf_token": admin.csrf("/admin/connections/keyed/edit")})
    assert edited.status_code == 303, edited.text[-800:]
    [active] = rows(live_app, SigningKey, SigningKey.connection_id == row.id, SigningKey.status == "active")
    assert active.alg == "ES384" and active.kid != first.kid


def test_bad_input_shows_the_error_keeps_the_input_and_saves_nothing(live_app: LiveApp,
                                                                     accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    cases = [(form("bad-iss", "not a url"), "iss must be an absolute"),
             (form("bad-zone", "https://bad-zone.example/fhir", clinics="Organization/o | X | Mars/Olympus"),
              "IANA zone"),
             (form("bad-secret", "https://bad-secret.example/fhir", client_auth="client_secret"),
              "needs a client secret"),
             (form("sandbox", "https://other.example/fhir"), "exists already")]
    for values, message in cases:
        response = add(admin, values)
        assert response.status_code == 400, values["name"]
        assert 'id="form-error"' in response.text and message in response.text
        assert f'value="{values["name"]}"' in response.text
        if values["name"] != "sandbox":
            assert connection(live_app, values["name"]) is None
    assert connection(live_app, "sandbox").iss != "https://other.example/fhir"  # type: ignore[union-attr]


def test_edit_keeps_the_stored_secret(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    assert add(admin, form("hillside", "https://hillside.example/fhir", client_auth="client_secret",
                           client_secret="hillside-secret-1")).status_code == 303
    sealed = connection(live_app, "hillside").client_secret_enc  # type: ignore[union-attr]
    edit = admin.get("/admin/connections/hillside/edit")
    assert edit.status_code == 200 and "hillside-secret-1" not in edit.text and sealed not in edit.text  # type: ignore[operator]
    token = _CSRF.findall(edit.text)[-1]
    values = form("ignored", "https://hillside.example/fhir", client_auth="client_secret", client_secret="",
                  scopes="launch openid fhirUser")
    response = admin.post("/admin/connections/hillside/edit", {**values, "csrf_token": token})
    assert response.status_code == 303, response.text[:500]
    row = connection(live_app, "hillside")
    assert row is not None and row.scopes == "launch openid fhirUser" and row.client_secret_enc == sealed
    assert connection(live_app, "ignored") is None  # the name comes from the URL, never from the form
    [record] = rows(live_app, AuditRecord, AuditRecord.action == "connection.update",
                    AuditRecord.connection_id == row.id)
    assert record.detail == "changed: scopes"


def test_it_sets_the_limits_at_the_ehr(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    assert add(admin, form("lakeside", "https://lakeside.example/fhir")).status_code == 303
    edit = admin.get("/admin/connections/lakeside/edit")
    assert 'id="ehr_max_in_flight" type="number" min="1" max="32" value="4"' in edit.text
    values = form("lakeside", "https://lakeside.example/fhir")
    bad = admin.post("/admin/connections/lakeside/edit",
                     {**values, "ehr_max_in_flight": "four", "csrf_token": _CSRF.findall(edit.text)[-1]})
    assert bad.status_code == 400 and "requests in flight must be a whole number" in bad.text
    response = admin.post("/admin/connections/lakeside/edit", {**values, "ehr_max_in_flight": "2",
                                                               "ehr_requests_per_minute": "300",
                                                               "csrf_token": _CSRF.findall(bad.text)[-1]})
    assert response.status_code == 303, response.text[:500]
    row = connection(live_app, "lakeside")
    assert row is not None and (row.ehr_max_in_flight, row.ehr_requests_per_minute) == (2, 300)
    assert "2 requests in flight, 300 a minute" in admin.get("/admin/connections/lakeside").text
    [record] = rows(live_app, AuditRecord, AuditRecord.action == "connection.update",
                    AuditRecord.connection_id == row.id)
    assert record.detail == "changed: ehr_max_in_flight, ehr_requests_per_minute"


def test_disabled_connection_refuses_launches(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    iss = f"{live_app.url}/not-a-fhir-server"
    assert add(admin, form("switchable", iss)).status_code == 303
    before = requests.get(f"{live_app.url}/launch", params={"iss": iss, "launch": "x"}, timeout=30)
    assert 'data-reason="unknown_iss"' not in before.text  # enabled: the app tries the EHR
    token = _CSRF.findall(admin.get("/admin/connections/switchable").text)[-1]
    response = admin.post("/admin/connections/switchable/disable", {"csrf_token": token})
    assert response.status_code == 303
    assert connection(live_app, "switchable").enabled is False  # type: ignore[union-attr]
    refused = requests.get(f"{live_app.url}/launch", params={"iss": iss, "launch": "x"}, timeout=30)
    assert refused.status_code == 400 and 'data-reason="unknown_iss"' in refused.text
    assert "This EHR is not connected" in refused.text
    token = _CSRF.findall(admin.get("/admin/connections/switchable").text)[-1]
    assert admin.post("/admin/connections/switchable/enable", {"csrf_token": token}).status_code == 303
    assert connection(live_app, "switchable").enabled is True  # type: ignore[union-attr]
    actions = [r.action for r in rows(live_app, AuditRecord, AuditRecord.entity == "Connection/switchable")]
    assert actions == ["connection.add", "connection.disable", "connection.enable"]


def test_it_checks_a_connection_from_its_page(live_app: LiveApp, accounts: dict[str, str]) -> None:
    """"Check now" probes the EHR as `prm connection check` does, stores the profile and audits it as the admin's;
    a practice manager sees no button and may not post one."""
    admin = signed_in(live_app, accounts["it_admin"])
    db = Database(live_app.database_url)
    try:  # what the sync found out itself (workers.patient_lists) is shown until a check asks again
        with db.session() as session:
            kept = [s for s in streams.ensure(session, connections.by_name(session, "sandbox").id or 0)
                    if s.resource_type in ("Appointment", "Encounter")]
        for stream, detail in zip(kept, ("answered in full: 50 patients a search",
                                         "refused (HTTP 400): one patient a search"), strict=True):
            with db.session() as session:
                streams.keep_patient_lists(session, stream.id or 0, {"allowed": None, "detail": detail})
    finally:
        db.dispose()
    page = admin.get("/admin/connections/sandbox").text
    assert (f">Searches naming several patients: {kept[0].resource_type} answered in full: 50 patients a search; "
            f"{kept[1].resource_type} refused (HTTP 400): one patient a search.</p>") in page
    token = re.search(r'action="/admin/connections/sandbox/check" class="inline">\s*'
                      r'<input type="hidden" name="csrf_token" value="([^"]+)"', page)
    assert token and 'id="check-connection"' in page
    before = {r.id for r in rows(live_app, AuditRecord, AuditRecord.action == "connection.check")}
    response = admin.post("/admin/connections/sandbox/check", {"csrf_token": token.group(1)})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/admin/connections/sandbox#capability")
    [record] = [r for r in rows(live_app, AuditRecord, AuditRecord.action == "connection.check") if r.id not in before]
    assert (record.actor_kind, record.actor, record.entity) == ("admin", accounts["it_admin"], "Connection/sandbox")
    checked = connection(live_app, "sandbox")
    assert checked is not None and checked.capability_checked_at is not None and checked.capability_profile
    shown = admin.get("/admin/connections/sandbox").text
    assert f"checked {checked.capability_checked_at:%Y-%m-%d %H:%M} UTC" in shown
    assert 'id="patient-lists"' not in shown, "the check starts the profile afresh: the sync asks again"
    manager = signed_in(live_app, accounts["practice_manager"])
    assert 'id="check-connection"' not in manager.get("/admin/connections/sandbox").text
    minted = csrf.issue(TEST_SECRET, hashlib.sha256(manager.cookies["prm_admin"].encode()).hexdigest(),
                        "admin.connection_check")
    assert manager.post("/admin/connections/sandbox/check", {"csrf_token": minted}).status_code == 403


def press(admin: Admin, action: str, button_id: str, path: str = "/admin/connections/sandbox") -> requests.Response:
    """Press one of a connection page's buttons as the browser would: its form's CSRF token, a 303 back."""
    page = admin.get(path).text
    token = re.search(rf'action="{re.escape(action)}" class="inline">\s*'
                      r'<input type="hidden" name="csrf_token" value="([^"]+)"', page)
    assert token and f'id="{button_id}"' in page, f"the {button_id} button and its form"
    response = admin.post(action, {"csrf_token": token.group(1)})
    assert response.status_code == 303
    return response


def test_it_has_every_stream_run_now_from_the_page(live_app: LiveApp, sandbox: SandboxStack,
                                                   accounts: dict[str, str]) -> None:
    """"Sync now" makes each stream's next run due at once: the app's worker runs them within seconds, not at
    their interval. The wake-up is audited with its count; a practice manager has no button."""
    sync_sandbox(live_app, sandbox, "Organization")
    stream = sandbox_stream(live_app, "Organization")

    def runs() -> int:  # the app's clock is frozen, so count the stream's job runs, not its run times
        return sum(job.runs for job in rows(live_app, Job, Job.kind == SYNC_STREAM, Job.subject_id == stream.id))

    before = runs()
    admin = signed_in(live_app, accounts["it_admin"])
    response = press(admin, "/admin/connections/sandbox/sync", "sync-connection")
    assert response.headers["Location"].endswith("/admin/connections/sandbox?woken=9#sync")
    assert "9 streams will run within seconds" in admin.get("/admin/connections/sandbox?woken=9").text
    wait_until(lambda: runs() > before, 30, what="the Organization stream run by the app's worker")
    [record] = rows(live_app, AuditRecord, AuditRecord.action == "sync.wake")
    assert (record.actor, record.count, record.entity) == (accounts["it_admin"], 9, "Connection/sandbox")
    manager = signed_in(live_app, accounts["practice_manager"])
    assert 'id="sync-connection"' not in manager.get("/admin/connections/sandbox").text


def test_missing_or_forged_csrf_is_refused_and_changes_nothing(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    other = signed_in(live_app, accounts["it_admin_2"])
    foreign = _CSRF.findall(other.get("/admin/connections/sandbox").text)[-1]  # valid, but for another session
    own_other_form = _CSRF.findall(admin.get("/admin/connections/sandbox").text)[0]  # this session, sign-out form
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": foreign}, {"csrf_token": own_other_form}):
        response = admin.post("/admin/connections/sandbox/disable", data)
        assert response.status_code == 400, data
        assert connection(live_app, "sandbox").enabled is True  # type: ignore[union-attr]
    response = admin.post("/admin/connections/new", form("csrf-less", "https://csrf-less.example/fhir"))
    assert response.status_code == 400 and connection(live_app, "csrf-less") is None


def test_practice_manager_may_view_but_not_change(live_app: LiveApp, accounts: dict[str, str]) -> None:
    manager = signed_in(live_app, accounts["practice_manager"])
    listing = manager.get("/admin/connections")
    assert listing.status_code == 200 and 'data-name="sandbox"' in listing.text
    assert 'id="add-connection"' not in listing.text
    detail = manager.get("/admin/connections/sandbox")
    assert detail.status_code == 200 and 'id="disable-connection"' not in detail.text
    assert manager.get("/admin/connections/new").status_code == 403
    # Even with a valid CSRF token (the page offers none, so mint one for this session), the role decides.
    token = csrf.issue(TEST_SECRET, hashlib.sha256(manager.cookies["prm_admin"].encode()).hexdigest(),
                       "admin.connection_create")
    response = manager.post("/admin/connections/new", {**form("pm-made", "https://pm.example/fhir"),
                                                        "csrf_token": token})
    assert response.status_code == 403 and 'id="denied"' in response.text
    assert connection(live_app, "pm-made") is None
    denied = rows(live_app, AuditRecord, AuditRecord.outcome == "denied",
                  AuditRecord.actor == accounts["practice_manager"])
    assert {r.action for r in denied} >= {"connection.manage"} and all(r.actor_kind == "admin" for r in denied)


def test_sign_out_ends_the_session(live_app: LiveApp, accounts: dict[str, str]) -> None:
    admin = signed_in(live_app, accounts["it_admin"])
    cookie = admin.cookies["prm_admin"]
    token = _CSRF.findall(admin.get("/admin/connections").text)[0]
    response = admin.post("/admin/sign-out", {"csrf_token": token})
    assert response.status_code == 303 and "signed_out=1" in response.headers["Location"]
    assert "prm_admin" not in admin.cookies
    replay = Admin(live_app.url, cookies={"prm_admin": cookie})
    assert replay.get("/admin/connections").status_code == 303
    actions = rows(live_app, AuditRecord, AuditRecord.action == "admin.sign_out",
                   AuditRecord.actor == accounts["it_admin"])
    assert actions


@pytest.fixture
def chromium() -> Iterator[Any]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.mark.browser
def test_in_chromium_sign_in_and_add_a_connection(chromium: Any, live_app: LiveApp, accounts: dict[str, str]) -> None:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text) if "Content Security Policy" in message.text
            else None)
    page.goto(f"{live_app.url}/admin/connections")
    assert "/admin/sign-in" in page.url
    page.fill("#username", accounts["it_admin"])
    page.fill("#password", PASSWORD)
    page.click("#sign-in")
    page.wait_for_url("**/admin/connections")
    assert page.locator("#signed-in-as").inner_text().startswith(accounts["it_admin"])
    page.click("#add-connection")
    page.fill("#name", "browser-made")
    page.fill("#iss", "https://browser.example/fhir")
    page.fill("#client_id", "prm-browser")
    page.fill("#clinics", "Organization/org-9 | Browser Clinic | America/New_York")
    page.click("#save-connection")
    page.wait_for_url("**/admin/connections/browser-made")
    assert page.locator("#iss").inner_text() == "https://browser.example/fhir"
    assert page.locator("#enabled-state").inner_text() == "enabled"
    cookie = next(c for c in context.cookies(live_app.url + "/admin/") if c["name"] == "prm_admin")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert connection(live_app, "browser-made") is not None and blocked == []
    page.click("#sign-out")
    page.wait_for_url("**/admin/sign-in?signed_out=1")
    context.close()


def _release(database: Database, lease: str) -> None:
    with database.session() as session:
        leases.release(session, lease, "another-worker")


def test_it_has_streams_read_everything_again_from_the_page_or_with_the_cli(live_app: LiveApp, sandbox: SandboxStack,
                                                                            accounts: dict[str, str]) -> None:
    """"Read all again" (after a restore or a repair at the EHR) asks every stream past its first load for a
    reload, audited per stream; the app's worker runs each within seconds and marks it served. `prm sync
    reload` asks it of the streams named, and so does each stream's "Read again"; a practice manager has no
    button."""
    sync_sandbox(live_app, sandbox, "Organization", "Location")
    sandbox_id = getattr(connection(live_app, "sandbox"), "id", None)

    def state() -> dict[str, tuple[int, int]]:
        return {s.resource_type: (s.reload_asked, s.reload_served)
                for s in rows(live_app, SyncStream, SyncStream.connection_id == sandbox_id) if s.phase == "incremental"}

    # The app's worker loads the other streams meanwhile: counted once all are past their first load, so none
    # turns incremental between the count and the press.
    wait_until(lambda: len(state()) == len(streams.SYNC_TYPES), 90, what="every stream's first load")
    loaded = sorted(state())
    admin = signed_in(live_app, accounts["it_admin"])
    response = press(admin, "/admin/connections/sandbox/reload", "reload-connection")
    assert response.headers["Location"].endswith(f"/admin/connections/sandbox?reloading={len(loaded)}#sync")
    shown = admin.get(f"/admin/connections/sandbox?reloading={len(loaded)}").text
    assert f"{len(loaded)} streams will read everything again" in shown
    wait_until(lambda: all(served == asked == 1 for asked, served in state().values()), 60,
               what="every loaded stream read again by the app's worker")
    records = rows(live_app, AuditRecord, AuditRecord.action == "sync.reload")
    assert sorted(r.entity for r in records) == loaded and {r.actor for r in records} == {accounts["it_admin"]}

    ran = live_app.prm("sync", "reload", "--connection", "sandbox", "--type", "Location")
    assert ran.returncode == 0 and "Location will read everything again" in ran.stdout, ran.stderr
    assert state()["Location"][0] == 2 and state()["Organization"] == (1, 1)
    wait_until(lambda: state()["Location"] == (2, 2), 60, what="the Location stream read again after the CLI's ask")
    response = press(admin, "/admin/connections/sandbox/streams/Organization/reload", "reload-Organization")
    assert response.headers["Location"].endswith("/admin/connections/sandbox?reloading=1&stream=Organization#sync")
    assert "Organization will read everything again" in admin.get(response.headers["Location"]).text
    assert state()["Organization"][0] == 2 and state()["Location"] == (2, 2), "only the stream whose button it was"
    wait_until(lambda: state()["Organization"] == (2, 2), 60, what="Organization read again after its button")
    token = re.search(r'streams/Organization/reload" class="inline">\s*<input type="hidden" name="csrf_token" '
                      r'value="([^"]+)"', admin.get("/admin/connections/sandbox").text)
    assert token, "the Organization stream's button, back once its reload was served"
    unknown = admin.post("/admin/connections/sandbox/streams/Observation/reload", {"csrf_token": token.group(1)})
    assert unknown.status_code == 400 and "not a synced type: Observation" in unknown.text
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    [location] = [r for r in status if r.get("type") == "Location" and "phase" in r]
    assert location["held"] == 10 and location["resources"] >= 30, "held once; written by the load and two reloads"
    assert re.search(r'<tr data-type="Location">.*?<td class="held">10</td>',
                     admin.get("/admin/connections/sandbox").text, re.S)
    wrong = live_app.prm("sync", "reload", "--connection", "sandbox", "--type", "Observation")
    assert wrong.returncode != 0 and "not a synced type: Observation" in wrong.stderr
    manager = signed_in(live_app, accounts["practice_manager"])
    assert 'id="reload-connection"' not in (seen := manager.get("/admin/connections/sandbox").text)
    assert 'id="reload-Location"' not in seen
    before = state()
    assert admin.post("/admin/connections/sandbox/reload", {}).status_code == 400, "no CSRF token"
    assert manager.post("/admin/connections/sandbox/reload", {}).status_code in (400, 403)
    assert manager.post("/admin/connections/sandbox/streams/Location/reload", {}).status_code in (400, 403)
    assert state() == before, "a refused post asks nothing"


def test_sync_health_is_shown_after_prm_sync_run(live_app: LiveApp, sandbox: SandboxStack,
                                                  accounts: dict[str, str]) -> None:
    """`prm sync run` in the foreground, then IT sees the streams (and their counts) on the connection page."""
    give_backend_access(live_app, sandbox)
    database = Database(live_app.database_url)
    with database.session() as session:  # a background worker is syncing Location right now; it ends in 2 s
        connection_id = session.exec(select(Connection.id).where(Connection.name == "sandbox")).one()
        lease = f"{streams.LEASE_PREFIX}{connection_id}:Location"
        assert leases.acquire(session, lease, "another-worker", datetime.now(UTC), 3600)
    finished = threading.Timer(2.0, lambda: _release(database, lease))
    finished.start()
    code, shown = live_app.prm_in_terminal("sync", "run", "--connection", "sandbox", "--type", "Organization",
                                           "--type", "Location")
    finished.join()
    database.dispose()
    assert code == 0, shown  # it waited for the worker, then synced Location itself
    status = live_app.prm("sync", "status", "--connection", "sandbox", "--json")
    by_type = {row["type"]: row for row in json.loads(status.stdout) if "phase" in row}
    assert by_type["Organization"]["resources"] >= 4 and by_type["Organization"]["phase"] == "incremental"
    assert by_type["Organization"]["held"] == 4, "the data set's four"
    frames = [re.sub(r"\x1b\[\?25[lh]", "", frame).strip() for frame in shown.split("\r")]
    frames = [frame for frame in frames if frame]  # the bar redrawn in place, then the closing line
    assert frames[0].startswith("sync sandbox") and frames[0].endswith("0/2"), frames
    assert any(re.search(r"1/2  (Organization|Location): \d+ stored, 0 deleted$", frame) for frame in frames), frames
    # What each type stored so far, in the label (none where the app's own worker had synced it already), then 2 of 2
    assert re.fullmatch(r"sync sandbox( Organization \d+)?(,? ?Location \d+)?  \[#+\]  2/2  Location: \d+ stored, "
                        r"0 deleted", frames[-2]), frames
    assert frames[-1] == "sync of sandbox finished"
    page = signed_in(live_app, accounts["it_admin"]).get("/admin/connections/sandbox")
    assert page.status_code == 200 and 'id="sync-streams"' in page.text
    assert re.search(r'<tr data-type="Location">.*?<td class="phase">incremental\b', page.text, re.S)
    assert re.search(r'<tr data-type="Organization">.*?<td class="lag">\d+ (s|min)</td>', page.text, re.S)
    wait_until(lambda: all(c.health_checked_at for c in rows(live_app, Connection, Connection.name == "sandbox")), 30,
               what="the embedded worker's first health check")
    page = signed_in(live_app, accounts["it_admin"]).get("/admin/connections/sandbox")
    assert 'SMART discovery</dt><dd class="status-ok">ok · from .well-known/smart-configuration' in page.text
    assert 'CapabilityStatement</dt><dd class="status-ok">ok · FHIR 4.0.1' in page.text
    listed = signed_in(live_app, accounts["it_admin"]).get("/admin/connections").text
    assert re.search(r'<tr data-name="sandbox">.*?<td class="sync-ok">9 streams · lag \d+ (s|min)</td>', listed, re.S)
    database = Database(live_app.database_url)
    with database.session() as session:  # a re-read longer than a run, under way
        [location] = [s for s in streams.of_connection(session, connection_id) if s.resource_type == "Location"]
        streams.keep_place(location, "reread", "https://ehr.example/fhir/Location?_offset=500",
                           datetime(2026, 11, 20, 11, 55, tzinfo=UTC))
        streams.record_error(location, lambda: datetime(2026, 11, 20, 11, 58, tzinfo=UTC), "HTTP 503 from the EHR")
        location.quarantined += 2  # two refused so far; the EHR has since mended one
        location.reload_asked += 1  # and IT asked for a reload (the frozen clock makes no job due to run it)
        for fhir_id in ("loc-bad-1", "loc-bad-2"):
            streams.quarantine(session, lambda: datetime(2026, 11, 20, 11, 50, tzinfo=UTC), connection_id, "Location",
                               {"resourceType": "Location", "id": fhir_id}, "name: not a string")
        streams.resolve_quarantined(session, lambda: datetime(2026, 11, 20, 11, 56, tzinfo=UTC), connection_id,
                                    "Location", ["loc-bad-1"])
        session.add(location)
    database.dispose()
    page = signed_in(live_app, accounts["it_admin"]).get("/admin/connections/sandbox")
    assert re.search(r'<tr data-type="Location">.*?reread pass under way since 2026-11-20 11:55 UTC', page.text, re.S)
    assert re.search(r'<tr data-type="Location">.*?\(reading everything again: asked\)', page.text, re.S)
    assert re.search(r'<tr data-type="Location">.*?<td class="quarantined">1 / 2</td>', page.text, re.S)
    assert "Location/loc-bad-2: name: not a string" in page.text and "loc-bad-1" not in page.text
    listed = signed_in(live_app, accounts["it_admin"]).get("/admin/connections").text
    assert re.search(r'<td class="sync-failing">1 of 9 streams failing · 1 quarantined · lag \d+ (s|min)</td>', listed)
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    assert [(r["quarantined_open"], r["quarantined"]) for r in status if r.get("type") == "Location"
            and "phase" in r] == [(1, 2)]
    assert [r["quarantined_id"] for r in status if "quarantined_id" in r] == ["loc-bad-2"]
    table = live_app.prm("sync", "status", "--connection", "sandbox").stdout.splitlines()
    assert table[0].split() == ["CONNECTION", "TYPE", "PHASE", "HELD", "QUAR", "CURSOR", "(EHR", "CLOCK)",
                                "LAST", "SUCCESS", "LAG", "ERROR"]
    location = next(line for line in table if line.split()[1] == "Location")
    assert re.fullmatch(r"sandbox +Location +incremental +\d+ +1 +\S+ \S+ +\S+ \S+ +\d+ (s|min) +"
                        r"\[reread pass under way\] \[reading everything again: asked\] HTTP 503 from the EHR",
                        location), location
    assert live_app.prm("connection", "disable", "sandbox").returncode == 0  # no stream runs: said, not "ok"
    listed = signed_in(live_app, accounts["it_admin"]).get("/admin/connections").text
    assert '<td class="sync-not-synced">paused (connection disabled) · 1 of 9 streams failing' in listed
    assert live_app.prm("connection", "enable", "sandbox").returncode == 0


def test_it_watches_sync_health_from_its_monitoring(live_app: LiveApp, sandbox: SandboxStack) -> None:
    """A Prometheus scrape of the running app, with the token IT set, says what `prm sync status` says."""
    sync_sandbox(live_app, sandbox, "Organization", "Location")
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    held = {r["type"]: r["held"] for r in status if "phase" in r and r["type"] in ("Organization", "Location")}
    scraped = requests.get(f"{live_app.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"},
                           timeout=10)
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(scraped.text)}
    scraped_held = {s.labels["type"]: s.value for s in families["prm_sync_stream_held_resources"].samples
                    if s.labels["connection"] == "sandbox" and s.labels["type"] in held}
    assert scraped_held == held and held["Organization"] == 4, (scraped_held, held)
    [lag] = [s.value for s in families["prm_sync_stream_lag_seconds"].samples
             if s.labels == {"connection": "sandbox", "type": "Organization"}]
    assert 0 <= lag < 3600, "just synced, on the app's clock"
    assert requests.get(f"{live_app.url}/metrics", timeout=10).status_code == 401


def sandbox_stream(live_app: LiveApp, resource_type: str) -> SyncStream:
    """The sandbox connection's stream of this type (other tests' EHR connections have streams too)."""
    [row] = rows(live_app, SyncStream, SyncStream.resource_type == resource_type,
                 SyncStream.connection_id == getattr(connection(live_app, "sandbox"), "id", None))
    return row


def with_streams(live_app: LiveApp, sandbox: SandboxStack) -> None:
    """The connection syncs, so the app's worker gives it streams within a sweep: whichever test ran before."""
    give_backend_access(live_app, sandbox)
    row = connection(live_app, "sandbox")
    assert row is not None
    wait_until(lambda: len(rows(live_app, SyncStream, SyncStream.connection_id == row.id)) == len(streams.SYNC_TYPES),
               30, what="the sandbox's streams")


_STRATEGY_FORM = re.compile(r'action="/admin/connections/sandbox/streams/Encounter/strategy">\s*'
                            r'<input type="hidden" name="csrf_token" value="([^"]*)"')


def test_it_chooses_how_a_stream_syncs_on_the_page_or_with_the_cli(live_app: LiveApp, sandbox: SandboxStack,
                                                                    accounts: dict[str, str]) -> None:
    """The override of the capability profile's strategy: per stream, audited; bad input changes nothing."""
    with_streams(live_app, sandbox)

    def strategy_of(resource_type: str) -> str:
        return sandbox_stream(live_app, resource_type).strategy

    admin = signed_in(live_app, accounts["it_admin"])
    found = _STRATEGY_FORM.search(admin.get("/admin/connections/sandbox").text)
    assert found, "the IT admin's page offers the strategy form"
    path = "/admin/connections/sandbox/streams/Encounter/strategy"
    assert admin.post(path, {"csrf_token": found.group(1), "strategy": "search"}).status_code == 303
    assert strategy_of("Encounter") == "search"
    refused = admin.post(path, {"csrf_token": found.group(1), "strategy": "fastest"})
    assert refused.status_code == 400 and "sync strategy must be one of" in refused.text
    assert admin.post(path, {"strategy": "bulk"}).status_code == 400  # no CSRF token
    assert strategy_of("Encounter") == "search"
    manager = signed_in(live_app, accounts["practice_manager"])
    page = manager.get("/admin/connections/sandbox").text
    assert not _STRATEGY_FORM.search(page)
    assert re.search(r'<tr data-type="Encounter"><td>Encounter</td>\s*<td>search', page)

    ran = live_app.prm("sync", "strategy", "--connection", "sandbox", "--type", "Patient", "--type", "Encounter",
                       "patient")
    assert ran.returncode == 0 and "Patient, Encounter changed to patient" in ran.stdout, ran.stderr
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    assert {r["type"]: r["strategy"] for r in status if "strategy" in r}["Patient"] == "patient"
    wrong = live_app.prm("sync", "strategy", "--connection", "sandbox", "--type", "Observation", "search")
    assert wrong.returncode != 0 and "not a synced type: Observation" in wrong.stderr
    changes = rows(live_app, AuditRecord, AuditRecord.action == "sync.strategy")
    assert sorted((r.entity, r.detail) for r in changes) == [
        ("Encounter", "patient"), ("Encounter", "search"), ("Patient", "patient")]


_INTERVAL_FORM = re.compile(r'action="/admin/connections/sandbox/streams/Appointment/interval">\s*'
                            r'<input type="hidden" name="csrf_token" value="([^"]*)"')


def test_it_sets_how_often_a_stream_runs_on_the_page_or_with_the_cli(live_app: LiveApp, sandbox: SandboxStack,
                                                                      accounts: dict[str, str]) -> None:
    """Per stream or per connection, audited; bad input changes nothing; a practice manager only reads it."""
    with_streams(live_app, sandbox)

    def interval_of(resource_type: str) -> int:
        return sandbox_stream(live_app, resource_type).interval_s

    admin = signed_in(live_app, accounts["it_admin"])
    found = _INTERVAL_FORM.search(admin.get("/admin/connections/sandbox").text)
    assert found, "the IT admin's page offers the interval menu"
    path = "/admin/connections/sandbox/streams/Appointment/interval"
    assert admin.post(path, {"csrf_token": found.group(1), "interval_s": "60"}).status_code == 303
    assert interval_of("Appointment") == 60
    page = admin.get("/admin/connections/sandbox").text
    assert re.search(r'<tr data-type="Appointment">.*?<option value="60" selected>1 min</option>', page, re.S)
    for bad, said in (("5", "a sync interval must be 30 s to 24 h"), ("soon", "must be a whole number")):
        refused = admin.post(path, {"csrf_token": found.group(1), "interval_s": bad})
        assert refused.status_code == 400 and said in refused.text
    assert admin.post(path, {"interval_s": "3600"}).status_code == 400  # no CSRF token
    assert interval_of("Appointment") == 60
    manager = signed_in(live_app, accounts["practice_manager"]).get("/admin/connections/sandbox").text
    assert not _INTERVAL_FORM.search(manager)
    assert re.search(r'<tr data-type="Appointment">.*?<td class="interval">1 min</td>', manager, re.S)

    ran = live_app.prm("sync", "interval", "--connection", "sandbox", "--type", "Organization", "--type", "Location",
                       "6h")
    assert ran.returncode == 0 and "Organization, Location changed to every 6 h" in ran.stdout, ran.stderr
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    assert {r["type"]: r["interval_s"] for r in status if "interval_s" in r}["Location"] == 6 * 3600
    for bad, said in (("10s", "a sync interval must be 30 s to 24 h"), ("fast", "is not like 90s, 5m or 1h")):
        wrong = live_app.prm("sync", "interval", "--connection", "sandbox", "--type", "Location", bad)
        assert wrong.returncode != 0 and said in wrong.stderr and "Traceback" not in wrong.stderr, wrong.stderr
    assert interval_of("Location") == 6 * 3600
    changes = rows(live_app, AuditRecord, AuditRecord.action == "sync.interval")
    assert sorted((r.entity, r.detail) for r in changes) == [
        ("Appointment", "60s"), ("Location", "21600s"), ("Organization", "21600s")]
    back = live_app.prm("sync", "interval", "--connection", "sandbox", "5m")  # as the other tests expect
    assert back.returncode == 0 and interval_of("Location") == interval_of("Appointment") == 300, back.stderr


def test_it_pauses_a_stream_the_ehr_does_not_offer_and_resumes_it(live_app: LiveApp, sandbox: SandboxStack,
                                                                  accounts: dict[str, str]) -> None:
    """Paused on the page: no run asks the EHR, the row and the list say so, nothing is judged failing; resumed
    with the CLI; both audited."""
    with_streams(live_app, sandbox)
    admin = signed_in(live_app, accounts["it_admin"])
    page = admin.get("/admin/connections/sandbox").text
    token = re.search(r'streams/PractitionerRole/pause">\s*<input type="hidden" name="csrf_token" value="([^"]*)"',
                      page)
    assert token, "the IT admin's page offers Pause"
    assert admin.post("/admin/connections/sandbox/streams/PractitionerRole/pause",
                      {"csrf_token": token.group(1)}).status_code == 303
    page = admin.get("/admin/connections/sandbox").text
    assert re.search(r'<tr data-type="PractitionerRole">.*?<td class="interval"><span class="paused">paused</span>.*?'
                     r'id="resume-PractitionerRole"', page, re.S)
    listed = admin.get("/admin/connections").text  # a stream another test left failing says so first
    assert re.search(r'<tr data-name="sandbox">.*?streams?(?: failing)? · 1 paused', listed, re.S)
    manager = signed_in(live_app, accounts["practice_manager"]).get("/admin/connections/sandbox").text
    assert 'id="resume-PractitionerRole"' not in manager and 'id="pause-Patient"' not in manager
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    assert {r["type"]: r["enabled"] for r in status if "enabled" in r}["PractitionerRole"] is False
    table = live_app.prm("sync", "status", "--connection", "sandbox").stdout.splitlines()
    assert "[paused]" in next(line for line in table if line.split()[1] == "PractitionerRole")
    assert "[paused]" not in next(line for line in table if line.split()[1] == "Patient")

    resumed = live_app.prm("sync", "resume", "--connection", "sandbox", "--type", "PractitionerRole")
    assert resumed.returncode == 0 and "PractitionerRole resumed" in resumed.stdout, resumed.stderr
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    assert {r["type"]: r["enabled"] for r in status if "enabled" in r}["PractitionerRole"] is True
    wrong = live_app.prm("sync", "pause", "--connection", "sandbox", "--type", "Observation")
    assert wrong.returncode != 0 and "not a synced type: Observation" in wrong.stderr
    changes = rows(live_app, AuditRecord, col(AuditRecord.action).in_(("sync.pause", "sync.resume")))
    assert [(r.action, r.entity) for r in sorted(changes, key=lambda r: r.id or 0)] == [
        ("sync.pause", "PractitionerRole"), ("sync.resume", "PractitionerRole")]


def test_a_stream_the_sync_paused_for_a_refusal_says_why_until_it_resumes(live_app: LiveApp, sandbox: SandboxStack,
                                                                        accounts: dict[str, str]) -> None:
    """The EHR refused a type its check found it does not offer (workers.stream_offers): the row says paused
    by the sync and why, as `prm sync status` does; IT's resume runs it again and the note goes."""
    with_streams(live_app, sandbox)
    row = connection(live_app, "sandbox")
    assert row is not None
    why = ("the EHR refused Location (HTTP 404) and its CapabilityStatement lists no Location; a check of the "
           "connection that finds it offered resumes it")
    database = Database(live_app.database_url)
    try:
        with database.session() as session:
            [location] = [s for s in streams.of_connection(session, row.id or 0) if s.resource_type == "Location"]
            streams.pause_refused(session, lambda: datetime.now(UTC), audit.Actor("system", "sync"), location, why)
    finally:
        database.dispose()
    page = signed_in(live_app, accounts["it_admin"]).get("/admin/connections/sandbox").text
    assert re.search(r'<tr data-type="Location">.*?<span class="paused">paused</span> '
                     r'<small class="pause-note">by the sync: the EHR refused Location \(HTTP 404\)', page, re.S)
    table = live_app.prm("sync", "status", "--connection", "sandbox").stdout.splitlines()
    assert f"[paused: {why}]" in next(line for line in table if line.split()[1] == "Location")
    resumed = live_app.prm("sync", "resume", "--connection", "sandbox", "--type", "Location")
    assert resumed.returncode == 0, resumed.stderr
    status = json.loads(live_app.prm("sync", "status", "--connection", "sandbox", "--json").stdout)
    assert [(r["enabled"], r["pause_note"]) for r in status if "enabled" in r and r["type"] == "Location"] == [
        (True, None)], "a stream's row (other rows name a type too)"


def test_it_erases_a_disabled_connections_synced_copy_having_typed_its_name(live_app: LiveApp,
                                                                           accounts: dict[str, str]) -> None:
    """The page offers the erasure only once the connection is disabled, and only to IT; a name typed wrong
    erases nothing; done, the page says how much went, and the audit trail who did it."""
    admin = signed_in(live_app, accounts["it_admin"])
    assert add(admin, form("leaving", "https://leaving.example/fhir")).status_code == 303
    leaving = connection(live_app, "leaving")
    assert leaving is not None
    database = Database(live_app.database_url)
    try:
        with database.session() as session:
            streams.ensure(session, leaving.id or 0)
            with (DATA / "Patient.ndjson").open() as lines:
                patients = [patient_record_from_patient(json.loads(next(lines))) for _ in range(4)]
            snapshots.upsert_page(session, leaving.id or 0, "Patient", patients)
    finally:
        database.dispose()
    assert 'id="erase-connection"' not in admin.get("/admin/connections/leaving").text, "not while enabled"
    press(admin, "/admin/connections/leaving/disable", "disable-connection", path="/admin/connections/leaving")
    manager = signed_in(live_app, accounts["practice_manager"])
    assert 'id="erase-connection"' not in manager.get("/admin/connections/leaving").text

    token = admin.csrf("/admin/connections/leaving")
    wrong = admin.post("/admin/connections/leaving/erase", {"csrf_token": token, "confirm": "sandbox"})
    assert wrong.status_code == 400 and "type the connection&#39;s name, leaving" in wrong.text
    assert len(rows(live_app, PatientRecord, PatientRecord.connection_id == leaving.id)) == 4

    page = admin.get("/admin/connections/leaving").text
    token = re.search(r'action="/admin/connections/leaving/erase" class="inline">\s*'
                      r'<input type="hidden" name="csrf_token" value="([^"]+)"', page)
    assert token and 'id="erase-confirm"' in page
    done = admin.post("/admin/connections/leaving/erase", {"csrf_token": token.group(1), "confirm": "leaving"})
    assert done.status_code == 303 and done.headers["Location"].endswith("/admin/connections/leaving?erased=4#erase")
    assert re.search(r'id="erased"[^>]*>Erased 4 rows copied from this EHR', admin.get(done.headers["Location"]).text)
    assert rows(live_app, PatientRecord, PatientRecord.connection_id == leaving.id) == []
    [erasure] = rows(live_app, AuditRecord, AuditRecord.action == "sync.erase", AuditRecord.connection_id == leaving.id)
    assert (erasure.actor, erasure.count, erasure.detail) == (accounts["it_admin"], 4, "Patient 4; 0 quarantined")
