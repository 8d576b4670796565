"""Storage on SQLite and PostgreSQL alike: migrations, UTC datetimes, idempotent writes, atomic claims."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect, text
from sqlmodel import Session, select

from prm import audit, connections, jobs, launches, leases
from prm.audit import Actor
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database, enqueue_after_commit
from prm.errors import LaunchError, ValidationError
from prm.migrate import pending_revisions, upgrade
from prm.models import AuditRecord, Connection, Job, Launch, Lease

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def spec(name: str = "riverside", iss: str = "https://ehr.example/fhir") -> connections.ConnectionSpec:
    return connections.ConnectionSpec(name=name, iss=iss, client_id="fhir-prm",
                                      frame_origins=("https://ehr.example",))


def add_connection(database: Database, settings: Settings) -> Connection:
    with database.session() as session:
        return connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec())


def test_migrations_create_every_table_and_are_current(database: Database) -> None:
    names = set(inspect(database.engine).get_table_names())
    assert {"connection", "launch", "audit_record", "outbox_row", "job", "lease", "local_admin"} <= names
    assert pending_revisions(database) == []
    upgrade(database)  # running again is a no-op


def test_datetimes_come_back_aware_utc(database: Database, settings: Settings) -> None:
    row = add_connection(database, settings)
    with database.session() as session:
        fresh = session.get(Connection, row.id)
        assert fresh is not None and fresh.created_at == NOW
        assert fresh.created_at.tzinfo is not None and fresh.created_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="naive datetime"), database.session() as session:
        session.add(Connection(name="x", iss="https://x.example/fhir", client_id="c",
                               created_at=datetime(2026, 1, 1), updated_at=NOW))


def test_connection_upsert_is_idempotent_and_keeps_secrets_sealed(database: Database, settings: Settings) -> None:
    box = SecretBox(settings.encryption_keys)
    secret_spec = connections.ConnectionSpec(name="hudson", iss="https://hudson.example/fhir/", client_id="a",
                                             client_auth="client_secret", client_secret="s3cret")
    with database.session() as session:
        first = connections.upsert(session, settings.clock, box, secret_spec)
    with database.session() as session:
        second = connections.upsert(session, settings.clock, box, secret_spec)
        assert second.id == first.id
        assert second.iss == "https://hudson.example/fhir"
        assert second.client_secret_enc and "s3cret" not in second.client_secret_enc
        assert box.open(second.client_secret_enc) == "s3cret"
        assert len(connections.list_all(session)) == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "Has Spaces"}, "name"),
        ({"iss": "ftp://ehr.example/fhir"}, "iss"),
        ({"iss": "https://ehr.example/fhir?x=1"}, "iss"),
        ({"iss": "http://ehr.example/fhir"}, "https"),
        ({"iss": "https://ehr example/fhir"}, "no spaces"),
        ({"iss": "https://ehr.example:99999/fhir"}, "a port up to 65535"),
        ({"iss": "https://it:hunter2@ehr.example/fhir"}, r"no user or password\), got 'https://ehr.example/fhir'"),
        ({"client_id": " "}, "client id"),
        ({"signing_alg": "HS256"}, "signing algorithm"),
        ({"backend_auth": "private_key_jwt"}, "backend client id"),
        ({"backend_scopes": "patient/Patient.rs"}, "system/"),
        ({"clinics": ({"organization": "Organization/o", "timezone": "Mars/Olympus"},)}, "IANA"),
        ({"frame_origins": ("https://ehr.example/path",)}, "frame origin"),
        ({"default_role": "surgeon"}, "unknown role"),
        ({"export_group": "dental patients"}, "Group id"),
        ({"export_group": "dental-patients"}, "system/Group.rs"),  # the default scopes cannot read the Group
        ({"ehr_max_in_flight": 0}, "requests in flight must be a whole number from 1 to 32"),
        ({"ehr_max_in_flight": 33}, "requests in flight"),
        ({"ehr_requests_per_minute": "1200"}, "requests a minute"),
        ({"ehr_requests_per_minute": 100_001}, "requests a minute"),
    ],
)
def test_bad_connection_input_is_refused_with_a_reason(changes: dict[str, object], message: str) -> None:
    base = spec().__dict__ | changes
    with pytest.raises(ValidationError, match=message):
        connections.validate(connections.ConnectionSpec(**base))  # type: ignore[arg-type]


@pytest.mark.parametrize("scope", ["system/Group.rs", "system/Group.r", "system/*.read", "system/Group.cruds"])
def test_an_export_group_is_kept_as_an_id_when_the_backend_may_read_it(scope: str) -> None:
    given = spec().__dict__ | {"export_group": " Group/dental-patients ",
                               "backend_scopes": f"{connections.DEFAULT_BACKEND_SCOPES} {scope}"}
    assert connections.validate(connections.ConnectionSpec(**given)).export_group == "dental-patients"


def test_one_iss_belongs_to_one_connection(database: Database, settings: Settings) -> None:
    add_connection(database, settings)
    with pytest.raises(ValidationError, match="already belongs"), database.session() as session:
        connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec(name="other"))


def test_launch_state_is_single_use(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    box = SecretBox(settings.encryption_keys)
    with database.session() as session:
        pending = launches.begin(session, settings.clock, box, connection, "ehr", "https://a", "https://t")
    assert len(pending.state) >= 22  # >= 128 bits of entropy, url-safe base64
    with database.session() as session:
        row = launches.take_pending(session, settings.clock, pending.state)
        assert launches.verifier_of(box, row) == pending.code_verifier
    with pytest.raises(LaunchError) as caught, database.session() as session:
        launches.take_pending(session, settings.clock, pending.state)
    assert caught.value.reason == "unknown_state"
    with pytest.raises(LaunchError) as missing, database.session() as session:
        launches.take_pending(session, settings.clock, None)
    assert missing.value.reason == "missing_state"


def test_an_expired_launch_state_fails_the_launch_for_good(database: Database, settings: Settings) -> None:
    """Refused as expired, the pending launch is failed and its state spent in the database (the refusal is not
    rolled back with the error): the same answer later is unknown, not expired again."""
    connection = add_connection(database, settings)
    box = SecretBox(settings.encryption_keys)
    with database.session() as session:
        pending = launches.begin(session, settings.clock, box, connection, "ehr", "https://a", "https://t")
    later = settings.clock() + launches.PENDING_TTL + timedelta(seconds=1)
    with pytest.raises(LaunchError) as expired, database.session() as session:
        launches.take_pending(session, lambda: later, pending.state)
    assert expired.value.reason == "expired_state"
    with database.session() as session:
        row = session.get(Launch, pending.launch.id)
        assert row is not None
        assert (row.status, row.failure_reason, row.state) == ("failed", "expired_state", None)
    with pytest.raises(LaunchError) as again, database.session() as session:
        launches.take_pending(session, lambda: later, pending.state)
    assert again.value.reason == "unknown_state"


def test_completed_launch_keeps_tokens_encrypted(database: Database, settings: Settings) -> None:
    connection = add_connection(database, settings)
    box = SecretBox(settings.encryption_keys)
    with database.session() as session:
        pending = launches.begin(session, settings.clock, box, connection, "ehr", "https://a", "https://t")
    with database.session() as session:
        row = launches.take_pending(session, settings.clock, pending.state)
        launches.complete(session, settings.clock, box, row,
                          {"access_token": "AT-1", "refresh_token": "RT-1", "expires_in": 300,
                           "patient": "pat-000001", "need_patient_banner": False, "scope": "launch"},
                          "Practitioner/prac-rdc-01", "clinician")
    with database.session() as session:
        active = launches.by_handle(session, pending.launch.handle)
        assert active is not None and active.status == "active" and active.patient_id == "pat-000001"
        assert "AT-1" not in (active.access_token_enc or "") and box.open(active.access_token_enc) == "AT-1"
        assert active.expires_at == NOW + timedelta(seconds=300)
        assert active.code_verifier_enc is None
        assert active.context == {"need_patient_banner": False, "token_lifetime_s": 300}


def test_job_slots_are_planned_once_and_claimed_once(database: Database) -> None:
    with database.session() as session:
        assert jobs.plan(session, jobs.HEALTH_CHECK, 1, NOW)
        assert not jobs.plan(session, jobs.HEALTH_CHECK, 1, NOW)
        assert jobs.ensure_planned(session, jobs.HEALTH_CHECK, [1, 2], NOW) == 1
    with database.session() as session:
        due = jobs.due(session, NOW, resend_after_s=60)
        assert sorted(j.subject_id for j in due) == [1, 2]
        first = jobs.claim(session, due[0].id or 0, "w1", NOW, lease_s=60)
    with database.session() as session:
        assert first is not None and first.status == "running" and first.attempts == 1
        assert jobs.claim(session, first.id or 0, "w2", NOW, lease_s=60) is None
        assert jobs.finish(session, first, "w1", NOW)
    with database.session() as session:
        done = session.get(Job, first.id)
        assert done is not None and done.status == "done" and done.runs == 1
        assert jobs.claim(session, first.id or 0, "w2", NOW, lease_s=60) is None


def test_a_dead_workers_job_is_claimable_after_its_lease(database: Database) -> None:
    with database.session() as session:
        jobs.plan(session, jobs.HEALTH_CHECK, 1, NOW)
        job_id = jobs.due(session, NOW, 60)[0].id or 0
        assert jobs.claim(session, job_id, "dead", NOW, lease_s=30) is not None
    with database.session() as session:
        assert jobs.claim(session, job_id, "w2", NOW + timedelta(seconds=10), lease_s=30) is None
        assert [j.id for j in jobs.due(session, NOW + timedelta(seconds=31), 60)] == [job_id]
        taken = jobs.claim(session, job_id, "w2", NOW + timedelta(seconds=31), lease_s=30)
        assert taken is not None and taken.attempts == 2


def test_woken_jobs_are_not_woken_again_until_the_wakeup_looks_lost(database: Database) -> None:
    with database.session() as session:
        jobs.plan(session, jobs.HEALTH_CHECK, 1, NOW)
        job_id = jobs.due(session, NOW, 60)[0].id or 0
        jobs.mark_enqueued(session, [job_id], NOW)
    with database.session() as session:
        assert jobs.due(session, NOW + timedelta(seconds=30), 60) == []
        assert [j.id for j in jobs.due(session, NOW + timedelta(seconds=61), 60)] == [job_id]


def test_next_slot_skips_missed_slots() -> None:
    assert jobs.next_slot(NOW, 300, NOW + timedelta(seconds=10)) == NOW + timedelta(seconds=300)
    late = NOW + timedelta(hours=2)
    assert jobs.next_slot(NOW, 300, late) == late + timedelta(seconds=300)


def test_leases_are_exclusive_until_they_lapse(database: Database) -> None:
    with database.session() as session:
        assert leases.acquire(session, "scheduler", "a", NOW, 30)
    with database.session() as session:
        assert not leases.acquire(session, "scheduler", "b", NOW + timedelta(seconds=10), 30)
        assert leases.acquire(session, "scheduler", "a", NOW + timedelta(seconds=10), 30)
    with database.session() as session:
        assert leases.acquire(session, "scheduler", "b", NOW + timedelta(seconds=41), 30)
        leases.release(session, "scheduler", "b")
    with database.session() as session:
        assert leases.acquire(session, "scheduler", "a", NOW, 30)


def test_workers_racing_for_a_lease_with_no_row_yet_leave_one_holder(database: Database) -> None:
    """A stream's lease has no row between runs: every worker finds none and inserts at once; one holds it."""
    start, won, failures = threading.Barrier(6), [], []

    def take(holder: str) -> None:
        start.wait()
        try:
            with database.session() as session:
                if leases.acquire(session, "sync-stream:1:Encounter", holder, NOW, 30):
                    won.append(holder)
        except Exception as exc:  # a loser must be told "no", not fail: kept for the assertion below
            failures.append(exc)

    racers = [threading.Thread(target=take, args=(f"worker-{n}",)) for n in range(6)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert failures == [] and len(won) == 1
    with database.session() as session:
        assert session.get(Lease, "sync-stream:1:Encounter").holder == won[0]  # type: ignore[union-attr]


def test_audit_rows_are_committed_with_the_action_or_not_at_all(database: Database, settings: Settings) -> None:
    actor = Actor(kind="user", name="Practitioner/prac-rdc-01", role="clinician", connection_id=1)
    with database.session() as session:
        audit.record(session, settings.clock, actor, "patient.read", patient_id="pat-000001",
                     entity="Patient/pat-000001")
    with pytest.raises(RuntimeError), database.session() as session:
        audit.record(session, settings.clock, actor, "patient.read", patient_id="pat-000002")
        raise RuntimeError("the action failed")
    with database.session() as session:
        rows = list(session.exec(select(AuditRecord)))
    assert [(r.patient_id, r.actor, r.role, r.occurred_at) for r in rows] == [
        ("pat-000001", "Practitioner/prac-rdc-01", "clinician", NOW)
    ]


def test_after_commit_hooks_run_only_after_a_commit(database: Database) -> None:
    ran: list[str] = []
    with database.session() as session:
        enqueue_after_commit(session, lambda: ran.append("committed"))
        assert ran == []
    assert ran == ["committed"]
    with pytest.raises(RuntimeError), database.session() as session:
        enqueue_after_commit(session, lambda: ran.append("rolled back"))
        raise RuntimeError
    assert ran == ["committed"]


def durability(session: Session) -> str:
    """The setting that decides whether this transaction's commit waits for the disk."""
    if session.get_bind().dialect.name == "sqlite":
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[session.execute(text("PRAGMA synchronous")).scalar_one()]
    return str(session.execute(text("SHOW synchronous_commit")).scalar_one())


def test_only_a_refetchable_transaction_commits_without_waiting_for_the_disk(database: Database,
                                                                             settings: Settings) -> None:
    durable = "FULL" if database.is_sqlite else "on"
    relaxed = "NORMAL" if database.is_sqlite else "off"
    with database.session() as session:
        assert durability(session) == durable
    with database.session(refetchable=True) as session:
        assert durability(session) == relaxed
        add = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys), spec())
    with pytest.raises(RuntimeError), database.session(refetchable=True) as session:
        assert durability(session) == relaxed
        raise RuntimeError("the page failed")
    for _ in range(3):  # whichever pooled connection comes next is durable again, after a commit or a rollback
        with database.session() as session:
            assert durability(session) == durable
            assert session.get(Connection, add.id) is not None  # what the relaxed commit wrote is there


def test_secrets_survive_updates_that_do_not_repeat_them(database: Database, settings: Settings) -> None:
    box = SecretBox(settings.encryption_keys)
    base = connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c",
                                      client_auth="client_secret")
    with pytest.raises(ValidationError, match="needs a client secret"), database.session() as session:
        connections.upsert(session, settings.clock, box, base)
    with database.session() as session:
        connections.upsert(session, settings.clock, box, connections.ConnectionSpec(**(base.__dict__ | {
            "client_secret": "s1", "backend_auth": "client_secret", "backend_client_id": "svc",
            "backend_client_secret": "b1"})))
    with database.session() as session:
        row = connections.upsert(session, settings.clock, box, connections.ConnectionSpec(**(base.__dict__ | {
            "backend_auth": "client_secret", "backend_client_id": "svc", "default_role": "front_desk"})))
        assert box.open(row.client_secret_enc) == "s1" and box.open(row.backend_client_secret_enc) == "b1"
    with database.session() as session:
        public = connections.upsert(session, settings.clock, box, connections.ConnectionSpec(
            name="c", iss="https://c.example/fhir", client_id="c"))
        assert public.client_secret_enc is None and public.backend_client_secret_enc is None
        it = Actor(kind="admin", name="it", role="it_admin")
        disabled = connections.set_enabled(session, settings.clock, it, "c", False)
        assert not disabled.enabled and connections.enabled_by_iss(session, "https://c.example/fhir") is None
        assert connections.set_enabled(session, settings.clock, it, "c", False) is disabled  # no change: no record
        switched = session.exec(select(AuditRecord).where(AuditRecord.entity == "Connection/c")).all()
        assert [(r.action, r.actor, r.connection_id) for r in switched] == [("connection.disable", "it", disabled.id)]
