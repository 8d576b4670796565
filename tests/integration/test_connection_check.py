"""`prm connection check` against real sandbox EHRs: green when all is well, each misconfiguration named.

fhir-prm's backend client is registered with the EHR by jwks_url only, so every backend token here
proves the EHR fetched our public key from the running app's /.well-known/jwks.json.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlmodel import select

from connector.backend import BackendAuthError, BackendCredentials, fetch_token
from ehr_sandbox.cli import BACKEND_CLIENT_ID, backend_client
from ehr_sandbox.config import SandboxConfig
from ehr_sandbox.ehr_app import EhrServer
from ehr_sandbox.stack import SandboxStack
from prm import keys
from prm.connections import DEFAULT_BACKEND_SCOPES
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import AuditRecord, Connection, SigningKey
from tests.integration.conftest import CLIENT_ID, IT_ADMIN_USER, LiveApp
from tests.support.ports import free_port
from tests.support.processes import BIN
from tests.support.settings import TEST_KEY, env_for


def add(app: LiveApp, name: str, iss: str, *extra: str) -> None:
    done = app.prm("connection", "add", "--name", name, "--iss", iss, "--client-id", CLIENT_ID, *extra)
    assert done.returncode == 0, done.stderr


def check(app: LiveApp, name: str) -> tuple[int, dict[str, Any], str]:
    """(exit code, stored profile, printed text) of `prm connection check NAME`."""
    done = app.prm("connection", "check", name)
    assert "Traceback" not in done.stderr, done.stderr
    with Database(app.database_url).session() as session:
        profile = session.exec(select(Connection).where(Connection.name == name)).one().capability_profile
    return done.returncode, profile, done.stdout


def jwks_kids(app: LiveApp) -> list[str]:
    response = requests.get(f"{app.url}/.well-known/jwks.json", timeout=10)
    assert response.status_code == 200
    return [k["kid"] for k in response.json()["keys"]]


@pytest.fixture(scope="module")
def app(sandbox: SandboxStack, live_app: LiveApp) -> LiveApp:
    """The live app's `sandbox` connection with Backend Services, as `ehr-sandbox up` sets it up."""
    sandbox.register_client(backend_client(live_app.url))
    add(live_app, "sandbox", sandbox.iss, "--frame-origin", sandbox.ehr_url, "--role-map", f"{IT_ADMIN_USER}=it_admin",
        "--backend-client-id", BACKEND_CLIENT_ID, "--backend-auth", "private_key_jwt")
    return live_app


@contextmanager
def ehr(app: LiveApp, sandbox: SandboxStack, profile: str,
        scopes: str = DEFAULT_BACKEND_SCOPES) -> Iterator[EhrServer]:
    """Another EHR with `profile` in front of the shared FHIR server (checks write nothing), connected to the
    live app as connection `profile`."""
    client = backend_client(app.url)
    client.scopes = scopes
    config = SandboxConfig(profile=profile, port=free_port(), fhir_internal_port=sandbox.config.fhir_internal_port,
                           clients=[client])
    with EhrServer(config) as server:
        add(app, profile, config.iss, "--backend-client-id", BACKEND_CLIENT_ID)
        yield server


def test_check_is_green_against_the_sandbox(app: LiveApp) -> None:
    code, profile, text = check(app, "sandbox")
    assert code == 0, text
    assert profile["ok"] and profile["errors"] == [] and profile["warnings"] == [], text
    assert text.splitlines()[0].startswith("connection sandbox: OK")
    backend = profile["backend"]
    assert backend["token"] and backend["missing"] == [] and backend["auth"] == "private_key_jwt"
    assert backend["kid"] in jwks_kids(app)  # the EHR verified our assertion with the key the app publishes
    assert backend["test_read"] == {"request": "Patient?_count=1", "ok": True, "status": 200, "entries": 1}
    assert profile["discovery"]["source"] == "well-known" and profile["discovery"]["smart_version"] == "v2"
    assert profile["client"]["user"]["missing"] == [] and profile["client"]["backend"]["judged"]
    assert profile["writes"]["Task"]["ok"] and profile["writes"]["Task"]["probe"] == "accepted"
    assert profile["writes"]["Communication"]["ok"]
    assert profile["resources"]["Encounter"] == {"listed": True, "read": True, "search": True, "create": True,
                                                 "update": True, "last_updated": True, "granted": "rs"}
    assert profile["sync"]["strategy"] == {"initial": "bulk-export-system", "incremental": "search-last-updated"}
    assert profile["count_limit"] == 1000
    with Database(app.database_url).session() as session:
        row = session.exec(select(Connection).where(Connection.name == "sandbox")).one()
        assert row.capability_profile["ok"] and row.capability_checked_at is not None
        audits = session.exec(select(AuditRecord).where(AuditRecord.action == "connection.check",
                                                        AuditRecord.connection_id == row.id)).all()
        assert audits and audits[-1].outcome == "success"


def test_the_jwks_is_public_and_cacheable(app: LiveApp) -> None:
    response = requests.get(f"{app.url}/.well-known/jwks.json", timeout=10)
    assert response.headers["Cache-Control"] == "public, max-age=300"
    for key in response.json()["keys"]:
        assert key["use"] == "sig" and key["alg"] in ("RS384", "ES384") and "d" not in key


def test_check_prints_json_on_request(app: LiveApp) -> None:
    done = app.prm("connection", "check", "sandbox", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True, done.stdout


def test_a_wrong_backend_client_id_is_named(app: LiveApp, sandbox: SandboxStack) -> None:
    with ehr(app, sandbox, "default") as server:
        add(app, "default", server.config.iss, "--backend-client-id", "not-registered")
        code, profile, text = check(app, "default")
    assert code == 1 and not profile["ok"]
    assert any("'not-registered'" in e and "invalid_client" in e for e in profile["errors"]), profile["errors"]
    assert "ERROR   no backend token: the EHR refused backend client 'not-registered'" in text


def test_a_scope_the_ehr_does_not_grant_is_named(app: LiveApp, sandbox: SandboxStack) -> None:
    narrow = DEFAULT_BACKEND_SCOPES.replace("system/Task.crus", "system/Task.rs")
    with ehr(app, sandbox, "default", scopes=narrow):
        code, profile, text = check(app, "default")
    assert code == 1
    assert "the EHR did not grant system/Task.crus (lacks cu) to backend client 'fhir-prm-backend'" in profile["errors"]
    assert any(w.startswith("no Task write: care tickets will stay in fhir-prm and be listed for IT")
               for w in profile["warnings"])
    assert "system/Task.crus" in text


def test_an_unreachable_ehr_is_named(app: LiveApp) -> None:
    add(app, "gone", f"http://127.0.0.1:{free_port()}/fhir", "--backend-client-id", BACKEND_CLIENT_ID)
    code, profile, text = check(app, "gone")
    assert code == 1
    assert len(profile["errors"]) == 1 and profile["errors"][0].startswith("SMART discovery failed")
    assert "unreachable" in profile["errors"][0] and "ERROR   SMART discovery failed" in text


def test_no_discovery_falls_back_to_the_capability_statement(app: LiveApp, sandbox: SandboxStack) -> None:
    with ehr(app, sandbox, "no-discovery"):
        code, profile, _ = check(app, "no-discovery")
    assert code == 0, profile["errors"]
    assert profile["discovery"]["source"] == "capability-statement" and profile["backend"]["token"]
    assert "scopes_supported is not published: scopes will be judged at first use" in profile["warnings"]
    assert any(w.startswith("no .well-known/smart-configuration") for w in profile["warnings"])


def test_v1_scopes_are_asked_for_and_accepted(app: LiveApp, sandbox: SandboxStack) -> None:
    with ehr(app, sandbox, "v1-scopes"):
        code, profile, _ = check(app, "v1-scopes")
    assert code == 0, profile["errors"]
    assert profile["discovery"]["smart_version"] == "v1"
    assert "system/Task.write" in profile["backend"]["granted"] and profile["backend"]["missing"] == []
    assert any(w.startswith("the EHR supports SMART v1 scopes only") for w in profile["warnings"])
    assert profile["writes"]["Task"]["ok"]


def test_refused_task_writes_are_a_warning_with_the_consequence(app: LiveApp, sandbox: SandboxStack) -> None:
    with ehr(app, sandbox, "task-writes-refused"):
        code, profile, text = check(app, "task-writes-refused")
    assert code == 0, profile["errors"]
    assert profile["writes"]["Task"]["probe"] == "refused" and not profile["writes"]["Task"]["ok"]
    assert profile["writes"]["Communication"]["ok"]
    assert [w for w in profile["warnings"] if w.startswith(
        "no Task write: care tickets will stay in fhir-prm and be listed for IT (POST Task/$validate -> HTTP 403")]
    assert "WARNING no Task write" in text


def test_no_export_means_searches_for_the_first_sync(app: LiveApp, sandbox: SandboxStack) -> None:
    with ehr(app, sandbox, "no-export"):
        code, profile, _ = check(app, "no-export")
    assert code == 0, profile["errors"]
    assert profile["sync"]["export"] == {"system": False, "group": False, "patient": False}
    assert profile["sync"]["strategy"] == {"initial": "search", "incremental": "search-last-updated"}
    assert any(w.startswith("no Bulk Data $export") for w in profile["warnings"])


def test_patient_scoped_only_means_patient_by_patient(app: LiveApp, sandbox: SandboxStack) -> None:
    with ehr(app, sandbox, "patient-scoped-only"):
        code, profile, _ = check(app, "patient-scoped-only")
    assert code == 0, profile["errors"]
    assert profile["sync"]["type_level_search"]["allowed"] is False
    assert profile["sync"]["strategy"]["incremental"] == "patient-by-patient"
    assert any(w.startswith("type-level searches must name a patient") for w in profile["warnings"])
    assert profile["count_limit"] is None


def _old_key_credentials(app: LiveApp, kid: str, token_endpoint: str) -> BackendCredentials:
    """What a worker that loaded the key before a rotation still holds."""
    with Database(app.database_url).session() as session:
        row = session.exec(select(SigningKey).where(SigningKey.kid == kid)).one()
        pem = keys.private_pem(SecretBox((TEST_KEY,)), row)
    return BackendCredentials(client_id=BACKEND_CLIENT_ID, token_endpoint=token_endpoint, auth="private_key_jwt",
                              alg=row.alg, kid=kid, private_key_pem=pem)


def test_key_rotation_without_downtime(app: LiveApp, sandbox: SandboxStack) -> None:
    _, before, _ = check(app, "sandbox")
    old = before["backend"]["kid"]
    rotated = app.prm("connection", "rotate-key", "sandbox")
    assert rotated.returncode == 0, rotated.stderr
    code, after, _ = check(app, "sandbox")
    new = after["backend"]["kid"]
    assert code == 0 and new != old and {old, new} <= set(jwks_kids(app))
    stale = _old_key_credentials(app, old, f"{sandbox.ehr_url}/oauth/token")
    assert fetch_token(stale, "system/Patient.rs", 10).access_token  # a worker mid-rotation keeps working

    retired = app.prm("connection", "rotate-key", "sandbox", "--retire-previous")
    assert retired.returncode == 0 and old in retired.stdout, retired.stderr
    assert old not in jwks_kids(app) and new in jwks_kids(app)
    code, last, _ = check(app, "sandbox")
    assert code == 0 and last["backend"]["kid"] == new
    with pytest.raises(BackendAuthError, match="invalid_client"):
        fetch_token(stale, "system/Patient.rs", 10)


def test_an_ehr_that_cannot_fetch_our_keys_refuses_the_client_not_errs(app: LiveApp, sandbox: SandboxStack) -> None:
    """The EHR answers `invalid_client` (a 4xx IT must mend), not a 500 a worker would retry, when our JWKS is
    out of its reach; its words say why."""
    unreachable = dataclasses.replace(backend_client(f"http://127.0.0.1:{free_port()}"), client_id="keys-out-of-reach")
    sandbox.register_client(unreachable)
    _, profile, _ = check(app, "sandbox")
    credentials = dataclasses.replace(_old_key_credentials(app, profile["backend"]["kid"],
                                                           f"{sandbox.ehr_url}/oauth/token"),
                                      client_id="keys-out-of-reach")
    with pytest.raises(BackendAuthError, match=r"invalid_client.*cannot fetch jwks_url"):
        fetch_token(credentials, "system/Patient.rs", 10)


def test_keys_reencrypt_reseals_every_secret_with_the_newest_key(tmp_path: Path) -> None:
    new_key = "mQ0j3Vd0kCJpX4m0gqgCw8qQk8xM2rjv0b8wzN1a7Ys="
    env = env_for(f"sqlite:///{tmp_path / 'prm.db'}", tmp_path / "instance", PRM_NEW_CLIENT_SECRET="user-secret",
                  PRM_NEW_BACKEND_CLIENT_SECRET="backend-secret")

    def prm(*args: str, keys_value: str = TEST_KEY) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "prm"), *args], env={**env, "PRM_ENCRYPTION_KEYS": keys_value},
                              cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)

    assert prm("db", "upgrade").returncode == 0
    added = prm("connection", "add", "--name", "hudson", "--iss", "https://hudson.example/fhir", "--client-id", "prm",
                "--client-auth", "private_key_jwt", "--signing-alg", "ES384", "--backend-client-id", "prm-backend",
                "--backend-auth", "client_secret", "--clinic", "Organization/org-1=Europe/London")
    assert added.returncode == 0 and "signing key" in added.stdout, added.stderr
    done = prm("keys", "reencrypt", keys_value=f"{new_key},{TEST_KEY}")
    assert done.returncode == 0 and "re-sealed 2 secret(s)" in done.stdout, done.stdout + done.stderr
    only_new = SecretBox((new_key,))
    with Database(f"sqlite:///{tmp_path / 'prm.db'}").session() as session:
        row = session.exec(select(Connection)).one()
        assert row.clinics == [{"organization": "Organization/org-1", "name": "", "timezone": "Europe/London"}]
        assert only_new.open(row.backend_client_secret_enc) == "backend-secret"
        key = session.exec(select(SigningKey)).one()
        assert key.alg == "ES384" and key.public_jwk["crv"] == "P-384"
        assert "PRIVATE KEY" in keys.private_pem(only_new, key)
