"""Launch hardening against EHRs that misbehave or are attacked (SMART App Launch 2.2, app side).

Each EHR here is a real authorization server with a behaviour profile (ehr_sandbox/profiles.py) in front
of the shared FHIR server, registered as its own connection of the running app.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from sqlmodel import select

from ehr_sandbox.config import SandboxClient
from prm.connections import DEFAULT_USER_SCOPES
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import AuditRecord, Launch
from tests.integration.conftest import CLIENT_ID, EhrFront, LiveApp
from tests.integration.launch_helpers import launch, sidebar_launch_url, stop_before_callback
from tests.support.settings import TEST_KEY

NO_REFRESH_SCOPES = "launch openid fhirUser patient/Patient.rs"


def launch_row(app: LiveApp, handle: str) -> Launch:
    db = Database(app.database_url)
    try:
        with db.session() as session:
            row = session.exec(select(Launch).where(Launch.handle == handle)).one()
            return row
    finally:
        db.dispose()


def sidebar(app: LiveApp, handle: str) -> requests.Response:
    return requests.get(f"{app.url}/app/{handle}/", timeout=30)


def test_an_expired_access_token_is_refreshed_mid_session(live_app: LiveApp,
                                                          ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("short-token-reuse-detection")
    started = launch(ehr, "pat-000011")
    assert started.response.status_code == 200
    before = ehr.store.refresh_grants
    time.sleep(6)  # the EHR's access tokens live 5 s
    again = sidebar(live_app, started.handle)
    assert again.status_code == 200 and 'id="patient-name"' in again.text
    assert ehr.store.refresh_grants == before + 1


def test_concurrent_requests_after_expiry_cause_one_refresh(live_app: LiveApp,
                                                             ehr_front: Callable[..., EhrFront]) -> None:
    """With refresh-reuse detection on, a second refresh with the rotated token would revoke everything."""
    ehr = ehr_front("short-token-reuse-detection")
    started = launch(ehr, "pat-000012")
    time.sleep(6)
    before = ehr.store.refresh_grants
    with ThreadPoolExecutor(max_workers=6) as pool:
        pages = list(pool.map(lambda _: sidebar(live_app, started.handle), range(6)))
    assert [p.status_code for p in pages] == [200] * 6
    assert ehr.store.refresh_grants == before + 1
    row = launch_row(live_app, started.handle)
    assert row.status == "active" and row.refreshing_until is None


def test_refresh_token_reuse_ends_the_session_with_a_clear_page(live_app: LiveApp,
                                                                ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("short-token-reuse-detection")
    started = launch(ehr, "pat-000013")
    stolen = SecretBox((TEST_KEY,)).open(launch_row(live_app, started.handle).refresh_token_enc)
    time.sleep(6)
    assert sidebar(live_app, started.handle).status_code == 200  # the app rotated the refresh token
    replay = requests.post(f"{ehr.server.url}/oauth/token", timeout=10,
                           data={"grant_type": "refresh_token", "refresh_token": stolen, "client_id": CLIENT_ID})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"  # and the family is revoked
    time.sleep(6)
    ended = sidebar(live_app, started.handle)
    assert ended.status_code == 401 and "Open fhir-prm again" in ended.text
    row = launch_row(live_app, started.handle)
    assert row.status == "ended" and row.failure_reason == "refresh_refused" and row.access_token_enc is None


def test_without_a_refresh_token_an_expired_session_asks_to_relaunch(live_app: LiveApp,
                                                                     ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("short-token", scopes=NO_REFRESH_SCOPES)
    started = launch(ehr, "pat-000014")
    assert started.response.status_code == 200
    assert launch_row(live_app, started.handle).refresh_token_enc is None
    time.sleep(6)
    page = sidebar(live_app, started.handle)
    assert page.status_code == 401 and "Open fhir-prm again" in page.text


@pytest.mark.parametrize("profile", ["id-token-expired", "id-token-wrong-aud", "id-token-bad-signature",
                                     "id-token-wrong-issuer"])
def test_an_untrustworthy_id_token_fails_the_launch(profile: str, live_app: LiveApp,
                                                    ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front(profile)
    result = launch(ehr, "pat-000015")
    assert result.response.status_code == 400
    assert 'data-reason="id_token_invalid"' in result.response.text
    assert not any("/app/" in u for u in result.urls)
    db = Database(live_app.database_url)
    with db.session() as session:
        last = session.exec(select(AuditRecord).order_by(AuditRecord.id.desc())).first()  # type: ignore[union-attr]
    db.dispose()
    assert last is not None and (last.action, last.outcome, last.detail) == (
        "launch.complete", "failure", "id_token_invalid")


def test_a_wrong_pkce_verifier_is_refused_by_the_ehr(live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("default")
    callback = stop_before_callback(ehr, "pat-000016")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    db = Database(live_app.database_url)
    with db.session() as session:
        row = session.exec(select(Launch).where(Launch.state == state)).one()
        row.code_verifier_enc = SecretBox((TEST_KEY,)).seal("a" * 64)  # not the verifier of the challenge sent
        session.add(row)
    db.dispose()
    page = requests.get(callback, allow_redirects=False, timeout=20)
    assert page.status_code == 400 and 'data-reason="token_exchange_failed"' in page.text


def test_v1_only_ehrs_are_asked_for_v1_scopes(live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("v1-scopes")
    result = launch(ehr, "pat-000017")
    assert result.response.status_code == 200 and 'id="patient-name"' in result.response.text
    authorize = parse_qs(urlsplit(next(u for u in result.urls if "/authorize" in u)).query)
    scopes = authorize["scope"][0].split()
    assert "patient/Patient.read" in scopes and not any(s.endswith(".rs") for s in scopes)


def test_standalone_launch_lets_the_user_pick_a_patient(live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("default")
    browser = requests.Session()
    picker = browser.get(f"{live_app.url}/launch/standalone", params={"connection": ehr.connection}, timeout=20)
    assert picker.status_code == 200 and 'id="picker"' in picker.text
    assert "launch/patient" in parse_qs(urlsplit(picker.url).query)["scope"][0].split()
    fields = {k: html.unescape(v) for k, v in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"',
                                                         picker.text)}
    done = browser.post(urljoin(picker.url, "/oauth/authorize"), timeout=20,
                        data={**fields, "patient_id": "pat-000001", "decision": "allow"})
    assert done.status_code == 200 and "Oliver Bennett" in done.text
    handle = re.search(r"/app/([^/]+)/", done.url)
    assert handle and launch_row(live_app, handle.group(1)).kind == "standalone"


def test_unknown_standalone_connection_is_refused(live_app: LiveApp) -> None:
    page = requests.get(f"{live_app.url}/launch/standalone", params={"connection": "nope"}, timeout=10)
    assert page.status_code == 400 and "not connected" in page.text.lower()


def test_the_app_redirects_only_to_the_ehrs_authorize_endpoint_or_itself(live_app: LiveApp,
                                                                         ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("default")
    start = sidebar_launch_url(ehr, "pat-000018") + "&next=https://evil.example/&redirect_uri=https://evil.example/"
    to_ehr = requests.get(start, allow_redirects=False, timeout=20)
    assert to_ehr.headers["Location"].startswith(f"{ehr.server.url}/oauth/authorize?")
    assert parse_qs(urlsplit(to_ehr.headers["Location"]).query)["redirect_uri"] == [f"{live_app.url}/launch/callback"]
    back = requests.get(to_ehr.headers["Location"], allow_redirects=False, timeout=20).headers["Location"]
    final = requests.get(back + "&next=https://evil.example/", allow_redirects=False, timeout=20)
    assert final.status_code == 303 and final.headers["Location"].startswith("/app/")


def test_ending_a_session_needs_the_handles_csrf_token(live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("default")
    first, second = launch(ehr, "pat-000019"), launch(ehr, "pat-000020")
    token = re.search(r'name="csrf_token" value="([^"]+)"', first.response.text)
    assert token
    end = f"{live_app.url}/app/{first.handle}/end"
    assert requests.post(end, timeout=10).status_code == 400
    other = f"{live_app.url}/app/{second.handle}/end"
    assert requests.post(other, data={"csrf_token": token.group(1)}, timeout=10).status_code == 400
    assert requests.post(end, data={"csrf_token": token.group(1)}, timeout=10).status_code == 200
    assert sidebar(live_app, first.handle).status_code == 401
    assert sidebar(live_app, second.handle).status_code == 200
    assert launch_row(live_app, first.handle).access_token_enc is None


def test_an_ehr_without_smart_discovery_is_found_through_its_capability_statement(
        live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("no-discovery")
    assert requests.get(f"{ehr.iss}/.well-known/smart-configuration", timeout=10).status_code == 404
    result = launch(ehr, "pat-000021")
    assert result.response.status_code == 200 and 'id="patient-name"' in result.response.text


def test_tokens_are_stored_encrypted(live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    ehr = ehr_front("default")
    result = launch(ehr, "pat-000022")
    row = launch_row(live_app, result.handle)
    issued = [t for t in ehr.store.by_access if ehr.store.by_access[t].user
              and ehr.store.by_access[t].user.patient == "pat-000022"]
    assert issued and row.access_token_enc and all(token not in row.access_token_enc for token in issued)
    raw = (live_app.workdir / "prm.db").read_bytes() + (live_app.workdir / "prm.db-wal").read_bytes()
    assert all(token.encode() not in raw for token in issued)


def test_a_confidential_asymmetric_client_signs_its_code_exchange_and_its_refresh(
        live_app: LiveApp, ehr_front: Callable[..., EhrFront]) -> None:
    """An EHR that registered fhir-prm's launch client as `private_key_jwt` (SMART's confidential asymmetric
    client) takes no unsigned token request: the code exchange and the refresh carry a client assertion signed
    with the connection's key, which the app publishes at /.well-known/jwks.json."""
    ehr = ehr_front("default")
    redo = live_app.prm("connection", "add", "--name", ehr.connection, "--iss", ehr.iss, "--client-id",
                        "fhir-prm-pkjwt", "--client-auth", "private_key_jwt",
                        "--frame-origin", ehr.server.config.ehr_url)
    assert redo.returncode == 0 and "signing key" in redo.stdout, redo.stderr
    ehr.server.register_client(SandboxClient(
        client_id="fhir-prm-pkjwt", redirect_uris=[f"{live_app.url}/launch/callback"], auth_method="private_key_jwt",
        jwks_url=f"{live_app.url}/.well-known/jwks.json", scopes=DEFAULT_USER_SCOPES + " launch/patient"))
    try:
        started = launch(ehr, "pat-000018")
        assert started.response.status_code == 200, started.response.text[:400]
        db = Database(live_app.database_url)
        try:
            with db.session() as session:
                row = session.exec(select(Launch).where(Launch.handle == started.handle)).one()
                assert row.refresh_token_enc is not None
                row.expires_at = row.completed_at  # expired: the next request refreshes, signed
                session.add(row)
                session.commit()
        finally:
            db.dispose()
        before = launch_row(live_app, started.handle).access_token_enc
        assert sidebar(live_app, started.handle).status_code == 200
        after = launch_row(live_app, started.handle)
        assert after.status == "active" and after.access_token_enc != before
    finally:
        restored = live_app.prm("connection", "add", "--name", ehr.connection, "--iss", ehr.iss, "--client-id",
                                CLIENT_ID, "--frame-origin", ehr.server.config.ehr_url)
        assert restored.returncode == 0, restored.stderr
