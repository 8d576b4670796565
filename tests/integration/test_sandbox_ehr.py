"""The sandbox EHR over real HTTP: SMART discovery, EHR/standalone launch, PKCE, refresh rotation, backend services."""
from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from ehr_sandbox.config import SandboxClient, SandboxConfig
from ehr_sandbox.ehr_app import EhrServer
from ehr_sandbox.stack import SandboxStack, free_port

REDIRECT = "http://127.0.0.1:9/callback"  # never followed: the tests read the Location header
PUBLIC_APP = "prm-public"
CONFIDENTIAL_APP = "prm-confidential"
BACKEND = "prm-backend"
PATIENT = "pat-000001"
EHR_SCOPE = "launch openid fhirUser offline_access patient/*.rs patient/Communication.cu"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def backend_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "backend-1", "alg": "RS384", "use": "sig"}, private=True)


def clients(backend_key: RSAKey) -> list[SandboxClient]:
    return [
        SandboxClient(PUBLIC_APP, [REDIRECT]),
        SandboxClient(CONFIDENTIAL_APP, [REDIRECT], auth_method="client_secret_basic", secret="s3cret"),
        SandboxClient(BACKEND, [], scopes="system/*.rs system/Communication.crus system/Task.cru",
                      auth_method="private_key_jwt", jwks={"keys": [backend_key.as_dict(private=False)]},
                      grant_types=["client_credentials"]),
    ]


@pytest.fixture(scope="module")
def stack(backend_key: RSAKey) -> Iterator[SandboxStack]:
    config = SandboxConfig(port=0, fhir_internal_port=0, app_launch_url="http://127.0.0.1:9/launch",
                           clients=clients(backend_key))
    with SandboxStack(config) as running:
        yield running


@pytest.fixture(scope="module")
def profile_ehr(stack: SandboxStack, backend_key: RSAKey) -> Iterator[Any]:
    """Another EHR app with a given profile in front of the same FHIR server (its URLs name the main EHR)."""
    started: list[EhrServer] = []

    def start(profile: str) -> EhrServer:
        config = SandboxConfig(profile=profile, port=free_port(), fhir_internal_port=stack.config.fhir_internal_port,
                               clients=clients(backend_key))
        server = EhrServer(config).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ---------------- helpers: the flows a real app runs ----------------

def launch_from_chart(ehr_url: str, patient: str = PATIENT, user: str | None = None) -> tuple[str, str]:
    """Open the chart like a clinician and read iss and launch from the sidebar iframe's src."""
    page = requests.get(f"{ehr_url}/chart/{patient}", params={"user": user} if user else None, timeout=30)
    assert page.status_code == 200
    found = re.search(r'<iframe id="prm-sidebar"[^>]*src="([^"]+)"', page.text, re.S)
    assert found, page.text
    src = html.unescape(found.group(1))
    query = parse_qs(urlparse(src).query)
    return query["iss"][0], query["launch"][0]


def authorize(iss: str, scope: str, client_id: str = PUBLIC_APP, **extra: str) -> tuple[OAuth2Session, str, str]:
    """Authorization request with PKCE; returns the session, the code_verifier and the redirect Location."""
    conf = requests.get(f"{iss}/.well-known/smart-configuration", timeout=30).json()
    session = OAuth2Session(client_id, scope=scope, redirect_uri=REDIRECT, code_challenge_method="S256",
                            token_endpoint_auth_method="none")
    verifier = generate_token(48)
    url, _state = session.create_authorization_url(conf["authorization_endpoint"], code_verifier=verifier,
                                                   aud=iss, **extra)
    resp = requests.get(url, allow_redirects=False, timeout=30)
    assert resp.status_code == 302, resp.text
    return session, verifier, resp.headers["Location"]


def ehr_launch(stack: SandboxStack, scope: str = EHR_SCOPE, **extra: str) -> dict[str, Any]:
    iss, launch = launch_from_chart(stack.ehr_url)
    session, verifier, location = authorize(iss, scope, launch=launch, **extra)
    return dict(session.fetch_token(f"{stack.ehr_url}/oauth/token", authorization_response=location,
                                    code_verifier=verifier))


def code_of(location: str) -> str:
    return parse_qs(urlparse(location).query)["code"][0]


def token_request(stack: SandboxStack, **form: str) -> requests.Response:
    return requests.post(f"{stack.ehr_url}/oauth/token", data=form, timeout=30)


def backend_token(ehr: SandboxStack | EhrServer, key: RSAKey, scope: str, jti: str | None = None) -> requests.Response:
    url = f"{ehr.config.ehr_url}/oauth/token"
    claims = {"iss": BACKEND, "sub": BACKEND, "aud": url, "exp": int(time.time()) + 240, "jti": jti or uuid.uuid4().hex}
    assertion = jwt.encode({"alg": "RS384", "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=["RS384"])
    return requests.post(url, timeout=30, data={"grant_type": "client_credentials", "scope": scope,
                                                "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})


def fhir(ehr: SandboxStack | EhrServer, method: str, path: str, token: str | None = None,
         **kwargs: Any) -> requests.Response:
    headers = {"Accept": "application/fhir+json", **kwargs.pop("headers", {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.request(method, f"{ehr.config.iss}/{path}", headers=headers, timeout=60, **kwargs)


def communication(patient: str = PATIENT) -> dict[str, Any]:
    return {"resourceType": "Communication", "status": "completed", "subject": {"reference": f"Patient/{patient}"},
            "identifier": [{"system": "urn:test:prm", "value": uuid.uuid4().hex}],
            "payload": [{"contentString": "sandbox test"}]}


# ---------------- discovery ----------------

def test_discovery_document(stack: SandboxStack) -> None:
    conf = requests.get(f"{stack.iss}/.well-known/smart-configuration", timeout=30).json()
    assert conf["authorization_endpoint"] == f"{stack.ehr_url}/oauth/authorize"
    assert conf["token_endpoint"] == f"{stack.ehr_url}/oauth/token"
    assert conf["code_challenge_methods_supported"] == ["S256"]
    assert {"private_key_jwt", "client_secret_basic", "none"} <= set(conf["token_endpoint_auth_methods_supported"])
    assert {"launch-ehr", "launch-standalone", "permission-v2", "sso-openid-connect", "authorize-post",
            "client-confidential-asymmetric", "context-ehr-patient"} <= set(conf["capabilities"])
    assert requests.get(conf["jwks_uri"], timeout=30).json()["keys"][0]["kty"] == "RSA"


def test_metadata_carries_oauth_uris_without_a_token(stack: SandboxStack) -> None:
    cap = fhir(stack, "GET", "metadata").json()
    ext = cap["rest"][0]["security"]["extension"][0]
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert ext["url"].endswith("/oauth-uris")
    assert uris == {"authorize": f"{stack.ehr_url}/oauth/authorize", "token": f"{stack.ehr_url}/oauth/token"}


def test_no_discovery_profile(profile_ehr: Any) -> None:
    ehr = profile_ehr("no-discovery")
    assert requests.get(f"{ehr.config.iss}/.well-known/smart-configuration", timeout=30).status_code == 404
    cap = requests.get(f"{ehr.config.iss}/metadata", timeout=30).json()
    assert cap["rest"][0]["security"]["extension"][0]["extension"][1]["valueUri"] == f"{ehr.url}/oauth/token"


# ---------------- the FHIR proxy ----------------

def test_unauthenticated_and_unknown_tokens_get_401(stack: SandboxStack) -> None:
    for token in (None, "not-a-token"):
        resp = fhir(stack, "GET", f"Patient/{PATIENT}", token)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_every_url_points_through_the_proxy(stack: SandboxStack, backend_key: RSAKey) -> None:
    token = backend_token(stack, backend_key, "system/*.rs system/Communication.crus").json()["access_token"]
    bundle = fhir(stack, "GET", "Encounter", token, params={"_count": "7"}).json()
    urls = [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]
    assert len(urls) > 7 and all(u.startswith(f"{stack.iss}/") for u in urls)
    page2 = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert requests.get(page2, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
    created = fhir(stack, "POST", "Communication", token, json=communication(),
                   headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201
    assert created.headers["Location"].startswith(f"{stack.iss}/Communication/")


# ---------------- EHR launch ----------------

def test_ehr_launch_gives_context_and_reads_only_the_launch_patient(stack: SandboxStack) -> None:
    token = ehr_launch(stack, nonce="n-123")
    assert token["patient"] == PATIENT and token["need_patient_banner"] is False
    assert token["token_type"].lower() == "bearer" and token["expires_in"] > 0 and token["refresh_token"]
    assert token["encounter"] and token["fhirContext"] == [{"reference": f"Encounter/{token['encounter']}"}]
    assert token["smart_style_url"] == f"{stack.ehr_url}/smart-style.json"
    keys = KeySet.import_key_set(requests.get(f"{stack.ehr_url}/oauth/jwks", timeout=30).json())
    claims = jwt.decode(token["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["fhirUser"] == f"{stack.iss}/Practitioner/prac-rdc-01"
    assert claims["aud"] == PUBLIC_APP and claims["iss"] == stack.ehr_url and claims["nonce"] == "n-123"

    access = token["access_token"]
    assert fhir(stack, "GET", f"Patient/{PATIENT}", access).json()["id"] == PATIENT
    assert fhir(stack, "GET", "Patient/pat-000002", access).status_code == 403
    encounters = fhir(stack, "GET", "Encounter", access, params={"_count": "200"}).json()
    subjects = {e["resource"]["subject"]["reference"] for e in encounters["entry"]}
    assert subjects == {f"Patient/{PATIENT}"}
    assert fhir(stack, "GET", "Encounter", access, params={"patient": "pat-000002"}).status_code == 403


def test_launch_as_another_user(stack: SandboxStack) -> None:
    iss, launch = launch_from_chart(stack.ehr_url, user="Practitioner/prac-rdc-02")
    session, verifier, location = authorize(iss, "launch openid fhirUser patient/Patient.rs", launch=launch)
    token = session.fetch_token(f"{stack.ehr_url}/oauth/token", authorization_response=location,
                                code_verifier=verifier)
    assert jwt.decode(token["id_token"], KeySet.import_key_set(
        requests.get(f"{stack.ehr_url}/oauth/jwks", timeout=30).json())).claims["fhirUser"].endswith(
        "/Practitioner/prac-rdc-02")
    assert "refresh_token" not in token  # neither offline_access nor online_access asked for


def test_authorize_post_ehr_launch(stack: SandboxStack) -> None:
    iss, launch = launch_from_chart(stack.ehr_url)
    session = OAuth2Session(PUBLIC_APP, scope="launch patient/Patient.rs", redirect_uri=REDIRECT,
                            code_challenge_method="S256", token_endpoint_auth_method="none")
    verifier = generate_token(48)
    url, _ = session.create_authorization_url(f"{stack.ehr_url}/oauth/authorize", code_verifier=verifier, aud=iss,
                                              launch=launch)
    form = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    resp = requests.post(f"{stack.ehr_url}/oauth/authorize", data=form, allow_redirects=False, timeout=30)
    token = session.fetch_token(f"{stack.ehr_url}/oauth/token", authorization_response=resp.headers["Location"],
                                code_verifier=verifier)
    assert token["patient"] == PATIENT and token["scope"] == "launch patient/Patient.rs"


def test_code_replay_is_refused_and_revokes_its_tokens(stack: SandboxStack) -> None:
    iss, launch = launch_from_chart(stack.ehr_url)
    _session, verifier, location = authorize(iss, EHR_SCOPE, launch=launch)
    form = {"grant_type": "authorization_code", "code": code_of(location), "redirect_uri": REDIRECT,
            "client_id": PUBLIC_APP, "code_verifier": verifier}
    first = token_request(stack, **form)
    assert first.status_code == 200
    access = first.json()["access_token"]
    assert fhir(stack, "GET", f"Patient/{PATIENT}", access).status_code == 200
    replay = token_request(stack, **form)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert fhir(stack, "GET", f"Patient/{PATIENT}", access).status_code == 401
    refresh = token_request(stack, grant_type="refresh_token", refresh_token=first.json()["refresh_token"],
                            client_id=PUBLIC_APP)
    assert refresh.json()["error"] == "invalid_grant"


def test_pkce_mismatch_is_invalid_grant(stack: SandboxStack) -> None:
    iss, launch = launch_from_chart(stack.ehr_url)
    _session, _verifier, location = authorize(iss, EHR_SCOPE, launch=launch)
    resp = token_request(stack, grant_type="authorization_code", code=code_of(location), redirect_uri=REDIRECT,
                         client_id=PUBLIC_APP, code_verifier=generate_token(48))
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_grant"


def _authorize_url(stack: SandboxStack, **params: str) -> requests.Response:
    base = {"response_type": "code", "client_id": PUBLIC_APP, "redirect_uri": REDIRECT, "scope": EHR_SCOPE,
            "state": "st-1", "aud": stack.iss, "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
            "code_challenge_method": "S256"}
    base.update(params)
    return requests.get(f"{stack.ehr_url}/oauth/authorize", params=base, allow_redirects=False, timeout=30)


def test_wrong_aud_plain_pkce_and_missing_state_redirect_with_invalid_request(stack: SandboxStack) -> None:
    for params in ({"aud": "http://evil.example/fhir"}, {"code_challenge_method": "plain"},
                   {"code_challenge": "", "code_challenge_method": ""}):
        resp = _authorize_url(stack, launch=launch_from_chart(stack.ehr_url)[1], **params)
        assert resp.status_code == 302, params
        query = parse_qs(urlparse(resp.headers["Location"]).query)
        assert resp.headers["Location"].startswith(REDIRECT)
        assert query["error"] == ["invalid_request"] and query["state"] == ["st-1"], params
    resp = _authorize_url(stack, state="", launch=launch_from_chart(stack.ehr_url)[1])
    assert parse_qs(urlparse(resp.headers["Location"]).query)["error"] == ["invalid_request"]


def test_unregistered_redirect_uri_or_client_never_redirects(stack: SandboxStack) -> None:
    for params in ({"redirect_uri": "http://127.0.0.1:9/callback/other"}, {"redirect_uri": "http://evil.example/cb"},
                   {"client_id": "nobody"}):
        resp = _authorize_url(stack, **params)
        assert resp.status_code == 400 and "Location" not in resp.headers, params
        assert "Sandbox EHR" in resp.text


def test_refresh_rotates_and_the_old_refresh_token_dies(stack: SandboxStack) -> None:
    first = ehr_launch(stack)
    second = token_request(stack, grant_type="refresh_token", refresh_token=first["refresh_token"],
                           client_id=PUBLIC_APP)
    assert second.status_code == 200
    body = second.json()
    assert body["refresh_token"] != first["refresh_token"] and body["patient"] == PATIENT
    assert fhir(stack, "GET", f"Patient/{PATIENT}", body["access_token"]).status_code == 200
    again = token_request(stack, grant_type="refresh_token", refresh_token=first["refresh_token"],
                          client_id=PUBLIC_APP)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # default profile: no reuse detection, the rotated-to token still works
    third = token_request(stack, grant_type="refresh_token", refresh_token=body["refresh_token"],
                          client_id=PUBLIC_APP)
    assert third.status_code == 200


def test_refresh_reuse_detection_revokes_the_family(profile_ehr: Any) -> None:
    ehr = profile_ehr("refresh-reuse-detection")
    iss, launch = launch_from_chart(ehr.url)
    session, verifier, location = authorize(iss, EHR_SCOPE, launch=launch)
    first = session.fetch_token(f"{ehr.url}/oauth/token", authorization_response=location, code_verifier=verifier)
    url = f"{ehr.url}/oauth/token"
    second = requests.post(url, data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                      "client_id": PUBLIC_APP}, timeout=30).json()
    reuse = requests.post(url, data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                                     "client_id": PUBLIC_APP}, timeout=30)
    assert reuse.json()["error"] == "invalid_grant"
    after = requests.post(url, data={"grant_type": "refresh_token", "refresh_token": second["refresh_token"],
                                     "client_id": PUBLIC_APP}, timeout=30)
    assert after.json()["error"] == "invalid_grant"
    read = requests.get(f"{iss}/Patient/{PATIENT}", headers={"Authorization": f"Bearer {second['access_token']}"},
                        timeout=30)
    assert read.status_code == 401


# ---------------- standalone launch ----------------

def test_standalone_launch_with_the_patient_picker(stack: SandboxStack) -> None:
    scope = "launch/patient openid fhirUser patient/*.rs"
    picker = _authorize_url(stack, scope=scope)
    assert picker.status_code == 200 and 'name="patient_id"' in picker.text
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', picker.text))
    form = {k: html.unescape(v) for k, v in form.items()}
    denied = requests.post(f"{stack.ehr_url}/oauth/authorize", data={**form, "decision": "deny"},
                           allow_redirects=False, timeout=30)
    query = parse_qs(urlparse(denied.headers["Location"]).query)
    assert query["error"] == ["access_denied"] and query["state"] == ["st-1"]

    session = OAuth2Session(PUBLIC_APP, scope=scope, redirect_uri=REDIRECT, code_challenge_method="S256",
                            token_endpoint_auth_method="none")
    verifier = generate_token(48)
    url, _ = session.create_authorization_url(f"{stack.ehr_url}/oauth/authorize", code_verifier=verifier,
                                              aud=stack.iss)
    params = {k: v[0] for k, v in parse_qs(urlparse(url).query).items()}
    allowed = requests.post(f"{stack.ehr_url}/oauth/authorize",
                            data={**params, "decision": "allow", "patient_id": "pat-000002"},
                            allow_redirects=False, timeout=30)
    token = session.fetch_token(f"{stack.ehr_url}/oauth/token", authorization_response=allowed.headers["Location"],
                                code_verifier=verifier)
    assert token["patient"] == "pat-000002" and token["need_patient_banner"] is True
    assert fhir(stack, "GET", "Patient/pat-000002", token["access_token"]).status_code == 200


def test_confidential_symmetric_client(stack: SandboxStack) -> None:
    iss, launch = launch_from_chart(stack.ehr_url)
    _session, verifier, location = authorize(iss, "launch patient/Patient.rs", client_id=CONFIDENTIAL_APP,
                                             launch=launch)
    form = {"grant_type": "authorization_code", "code": code_of(location), "redirect_uri": REDIRECT,
            "code_verifier": verifier}
    wrong = requests.post(f"{stack.ehr_url}/oauth/token", data=form, auth=(CONFIDENTIAL_APP, "nope"), timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    ok = requests.post(f"{stack.ehr_url}/oauth/token", data=form, auth=(CONFIDENTIAL_APP, "s3cret"), timeout=30)
    assert ok.status_code == 200 and ok.json()["scope"] == "launch patient/Patient.rs"


# ---------------- backend services ----------------

def test_backend_services_private_key_jwt_and_write_scopes(stack: SandboxStack, backend_key: RSAKey) -> None:
    read_only = backend_token(stack, backend_key, "system/*.rs")
    assert read_only.status_code == 200, read_only.text
    body = read_only.json()
    assert body["scope"] == "system/*.rs" and "refresh_token" not in body
    token = body["access_token"]
    assert fhir(stack, "GET", "Patient", token, params={"_count": "1"}).json()["total"] == 300
    refused = fhir(stack, "POST", "Communication", token, json=communication(),
                   headers={"Content-Type": "application/fhir+json"})
    assert refused.status_code == 403 and refused.json()["resourceType"] == "OperationOutcome"

    writer = backend_token(stack, backend_key, "system/Communication.crus").json()["access_token"]
    created = fhir(stack, "POST", "Communication", writer, json=communication(),
                   headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text


def test_backend_assertion_replay_and_non_system_scopes_are_refused(stack: SandboxStack,
                                                                   backend_key: RSAKey) -> None:
    jti = uuid.uuid4().hex
    assert backend_token(stack, backend_key, "system/*.rs", jti=jti).status_code == 200
    replay = backend_token(stack, backend_key, "system/*.rs", jti=jti)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"
    user_scope = backend_token(stack, backend_key, "user/*.rs")
    assert user_scope.status_code == 400 and user_scope.json()["error"] == "invalid_scope"
    other_key = RSAKey.generate_key(2048, parameters={"kid": "backend-1"}, private=True)
    assert backend_token(stack, other_key, "system/*.rs").json()["error"] == "invalid_client"


def test_shell_pages(stack: SandboxStack) -> None:
    listing = requests.get(stack.ehr_url, params={"name": "Bennett"}, timeout=30)
    assert "<title>Sandbox EHR</title>" in listing.text and 'href="/chart/pat-000001"' in listing.text
    chart = requests.get(f"{stack.ehr_url}/chart/{PATIENT}", timeout=30).text
    assert 'id="prm-sidebar"' in chart and "width:360px" in chart and "Oliver Bennett" in chart
    assert requests.get(f"{stack.ehr_url}/chart/nobody", timeout=30).status_code == 404


def test_bulk_export_through_the_proxy(stack: SandboxStack, backend_key: RSAKey) -> None:
    token = backend_token(stack, backend_key, "system/*.rs").json()["access_token"]
    kick = fhir(stack, "GET", "$export", token, params={"_type": "Organization"},
                headers={"Prefer": "respond-async"})
    assert kick.status_code == 202 and kick.headers["Content-Location"].startswith(f"{stack.iss}/")
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(100):
        status = requests.get(kick.headers["Content-Location"], headers=auth, timeout=30)
        if status.status_code == 200:
            break
        time.sleep(0.2)
    files = status.json()["output"]
    assert files and all(f["url"].startswith(f"{stack.iss}/") for f in files)
    ndjson = requests.get(files[0]["url"], headers=auth, timeout=30)
    assert ndjson.status_code == 200 and len(ndjson.text.splitlines()) == 4
    assert requests.get(files[0]["url"], timeout=30).status_code == 401
    patient_token = ehr_launch(stack)["access_token"]
    assert fhir(stack, "GET", "$export", patient_token, headers={"Prefer": "respond-async"}).status_code == 403


def test_transaction_bundles_need_system_write_scopes(stack: SandboxStack, backend_key: RSAKey) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": communication(), "request": {"method": "POST", "url": "Communication"}}]}
    headers = {"Content-Type": "application/fhir+json"}
    patient_token = ehr_launch(stack)["access_token"]
    assert fhir(stack, "POST", "", patient_token, json=bundle, headers=headers).status_code == 403
    reader = backend_token(stack, backend_key, "system/*.rs").json()["access_token"]
    assert fhir(stack, "POST", "", reader, json=bundle, headers=headers).status_code == 403
    writer = backend_token(stack, backend_key, "system/Communication.crus").json()["access_token"]
    assert fhir(stack, "POST", "", writer, json=bundle, headers=headers).status_code == 200


def test_v1_scopes_profile(profile_ehr: Any, backend_key: RSAKey) -> None:
    ehr = profile_ehr("v1-scopes")
    conf = requests.get(f"{ehr.config.iss}/.well-known/smart-configuration", timeout=30).json()
    assert "permission-v2" not in conf["capabilities"] and "system/*.read" in conf["scopes_supported"]
    granted = backend_token(ehr, backend_key, "system/Patient.rs system/Communication.crus").json()["scope"]
    assert granted.split() == ["system/Patient.read", "system/Communication.read", "system/Communication.write"]


def test_short_token_profile(profile_ehr: Any, backend_key: RSAKey) -> None:
    ehr = profile_ehr("short-token")
    body = backend_token(ehr, backend_key, "system/*.rs").json()
    assert body["expires_in"] == 5
    assert fhir(ehr, "GET", "Patient/pat-000001", body["access_token"]).status_code == 200
    time.sleep(5.2)
    assert fhir(ehr, "GET", "Patient/pat-000001", body["access_token"]).status_code == 401


def test_no_export_profile(profile_ehr: Any, backend_key: RSAKey) -> None:
    ehr = profile_ehr("no-export")
    token = backend_token(ehr, backend_key, "system/*.rs").json()["access_token"]
    assert fhir(ehr, "GET", "$export", token, headers={"Prefer": "respond-async"}).status_code == 404
    cap = fhir(ehr, "GET", "metadata").json()
    assert "export" not in {op["name"] for op in cap["rest"][0].get("operation", [])}


def test_group_export_only_profile(profile_ehr: Any, backend_key: RSAKey) -> None:
    ehr = profile_ehr("group-export-only")
    token = backend_token(ehr, backend_key, "system/*.rs").json()["access_token"]
    prefer = {"Prefer": "respond-async"}
    assert fhir(ehr, "GET", "$export", token, headers=prefer).status_code == 404
    assert fhir(ehr, "GET", "Patient/$export", token, headers=prefer).status_code == 404
    assert fhir(ehr, "GET", "Group/nobody/$export", token, headers=prefer).status_code == 404  # no such Group
    cap = fhir(ehr, "GET", "metadata").json()["rest"][0]
    exporting = {r["type"] for r in cap["resource"] if "export" in {op["name"] for op in r.get("operation", [])}}
    assert "export" not in {op["name"] for op in cap.get("operation", [])} and exporting == {"Group"}


def test_patient_scoped_only_profile(profile_ehr: Any, backend_key: RSAKey) -> None:
    ehr = profile_ehr("patient-scoped-only")
    token = backend_token(ehr, backend_key, "system/*.rs").json()["access_token"]
    assert fhir(ehr, "GET", "Encounter", token).status_code == 403
    assert fhir(ehr, "GET", "Encounter", token, params={"patient": "pat-000001"}).status_code == 200
    assert fhir(ehr, "GET", "Patient", token).status_code == 403
    assert fhir(ehr, "GET", "Patient", token, params={"_id": "pat-000001"}).status_code == 200


@pytest.mark.parametrize(("profile", "answer"), [("patient-scoped-only", "both"), ("group-export-only", "refused"),
                                                 ("patient-lists-first-only", "first")])
def test_a_search_naming_two_patients_per_profile(profile_ehr: Any, backend_key: RSAKey, profile: str,
                                                  answer: str) -> None:
    """FHIR's OR (`patient=A,B`) as sekmet answers it; refused, as EHRs taking one patient a search do; or the
    first patient's records alone, as a server that drops the rest of the list silently would."""
    ehr = profile_ehr(profile)
    token = backend_token(ehr, backend_key, "system/*.rs").json()["access_token"]

    def visits(patients: str) -> requests.Response:
        return fhir(ehr, "GET", "Encounter", token, params={"patient": patients, "_count": "200"})

    first, second = ({e["resource"]["id"] for e in visits(p).json().get("entry", [])}
                     for p in ("Patient/pat-000001", "Patient/pat-000002"))
    both = visits("Patient/pat-000001,Patient/pat-000002")
    assert first and second
    if answer == "refused":
        assert both.status_code == 400 and both.json()["issue"][0]["code"] == "not-supported"
    else:
        found = {e["resource"]["id"] for e in both.json().get("entry", [])}
        assert found == (first | second if answer == "both" else first)


def test_task_writes_refused_profile(profile_ehr: Any, backend_key: RSAKey) -> None:
    ehr = profile_ehr("task-writes-refused")
    token = backend_token(ehr, backend_key, "system/Task.cru").json()["access_token"]
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": "Patient/pat-000001"}}
    resp = fhir(ehr, "POST", "Task", token, json=task, headers={"Content-Type": "application/fhir+json"})
    assert resp.status_code == 403 and resp.json()["resourceType"] == "OperationOutcome"
