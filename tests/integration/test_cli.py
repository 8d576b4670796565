"""The `prm` and `ehr-sandbox` commands as a user runs them: clear one-line errors, idempotent connections."""

from __future__ import annotations

import json
import signal
import socket
from datetime import timedelta
from pathlib import Path

import requests
from sqlmodel import select

from ehr_sandbox.cli import DATASET_NOW
from prm import jobs, streams
from prm.clock import clock_from_setting
from prm.db import Database
from prm.models import AuditRecord, Connection
from prm.snapshot_models import QuarantinedResource, SyncStream
from tests.support.ports import free_port
from tests.support.postgres import fresh_database
from tests.support.processes import BIN, Process, wait_until
from tests.support.processes import run_prm as prm
from tests.support.settings import TEST_KEY, TEST_SECRET, env_for


def test_a_missing_setting_stops_with_one_line(tmp_path: Path) -> None:
    done = prm("connection", "list", env={}, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "PRM_SECRET_KEY is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unreachable_database_stops_with_one_line(tmp_path: Path) -> None:
    env = {"PRM_SECRET_KEY": TEST_SECRET, "PRM_ENCRYPTION_KEYS": TEST_KEY,
           "PRM_DATABASE_URL": f"postgresql://prm:prm@127.0.0.1:{free_port()}/prm"}
    done = prm("serve", env=env, cwd=tmp_path)
    assert done.returncode == 2 and "database unreachable" in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    env = env_for(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path / "instance")
    done = prm("serve", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert done.returncode != 0 and "prm db upgrade" in done.stderr


def test_connections_on_postgresql(tmp_path: Path) -> None:
    with fresh_database() as url:
        env = env_for(url, tmp_path / "instance", PRM_NEW_CLIENT_SECRET="very-secret-value")
        assert prm("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
        args = ["connection", "add", "--name", "hudson", "--iss", "https://hudson.example/fhir",
                "--client-id", "prm", "--client-auth", "client_secret", "--frame-origin", "https://ehr.hudson.example"]
        first = prm(*args, env=env, cwd=tmp_path)
        again = prm(*args, "--default-role", "front_desk", "--max-in-flight", "2", "--requests-per-minute", "300",
                    env=env, cwd=tmp_path)
        assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
        assert first.stdout.split("(id")[1] == again.stdout.split("(id")[1]
        shown = json.loads(prm("connection", "show", "hudson", env=env, cwd=tmp_path).stdout)
        assert shown["default_role"] == "front_desk" and shown["client_secret"] == "(set)"
        assert (shown["max_in_flight"], shown["requests_per_minute"]) == (2, 300)
        assert shown["frame_origins"] == ["https://ehr.hudson.example"]
        listed = prm("connection", "list", env=env, cwd=tmp_path).stdout
        assert "hudson" in listed and "very-secret-value" not in listed
        bad = prm("connection", "add", "--name", "x", "--iss", "not a url", "--client-id", "c", env=env, cwd=tmp_path)
        assert bad.returncode == 2 and "iss must be" in bad.stderr
        greedy = prm(*args, "--max-in-flight", "50", env=env, cwd=tmp_path)
        assert greedy.returncode == 2 and "requests in flight must be a whole number from 1 to 32" in greedy.stderr
        typo = prm("sync", "run", "--connection", "hudson", "--type", "Patinet", env=env, cwd=tmp_path)
        assert typo.returncode == 2 and "not a synced type: Patinet" in typo.stderr, typo.stderr
        paused_now = prm("sync", "pause", "--connection", "hudson", "--type", "Patient", env=env, cwd=tmp_path)
        assert paused_now.returncode == 0
        paused = prm("sync", "run", "--connection", "hudson", "--type", "Patient", env=env, cwd=tmp_path)
        assert paused.returncode == 1 and "finished without Patient (paused" in paused.stdout, paused.stdout
        database = Database(url)
        with database.session() as session:  # paused by the sync itself: the EHR does not offer the type
            [related] = [s for s in session.exec(select(SyncStream)) if s.resource_type == "RelatedPerson"]
            related.enabled, related.pause_note = False, "the EHR does not offer RelatedPerson"
            session.add(related)
            session.commit()
        database.dispose()
        not_offered = prm("sync", "run", "--connection", "hudson", "--type", "RelatedPerson", env=env, cwd=tmp_path)
        assert not_offered.returncode == 0 and "sync of hudson finished\n" in not_offered.stdout, not_offered.stdout
        assert prm("connection", "disable", "hudson", env=env, cwd=tmp_path).returncode == 0
        off = prm("sync", "run", "--connection", "hudson", env=env, cwd=tmp_path)
        assert off.returncode == 2 and "connection hudson is disabled" in off.stderr, off.stderr
        rerun = prm(*args, env=env, cwd=tmp_path)  # a provisioning script run again: it re-enables nothing
        assert rerun.returncode == 0 and "it stays disabled" in rerun.stdout, rerun.stdout + rerun.stderr
        assert json.loads(prm("connection", "show", "hudson", env=env, cwd=tmp_path).stdout)["enabled"] is False
        database = Database(url)
        with database.session() as session:
            changes = [(a.action, a.actor_kind, a.detail) for a in session.exec(
                select(AuditRecord).where(AuditRecord.entity == "Connection/hudson").order_by(AuditRecord.id))]
        database.dispose()
        assert [a for a, _, _ in changes] == ["connection.add", "connection.update", "connection.disable",
                                              "connection.update"] and {k for _, k, _ in changes} == {"admin"}
        assert changes[1][2] is not None and "default_role" in changes[1][2], "what the second run changed"
        missing = prm("connection", "show", "nope", env=env, cwd=tmp_path)
        assert missing.returncode == 2 and "no connection named 'nope'" in missing.stderr
        admin = prm("admin", "add", "it.lead", env=env, cwd=tmp_path, stdin="correct horse battery\n")
        assert admin.returncode == 0, admin.stderr
        weak = prm("admin", "add", "it.other", env=env, cwd=tmp_path, stdin="short\n")
        assert weak.returncode == 2 and "at least 12" in weak.stderr


def test_ehr_sandbox_up_starts_the_ehr_and_the_app_and_prints_the_url(tmp_path: Path) -> None:
    ports = {"--port": free_port(), "--fhir-port": free_port(), "--app-port": free_port()}
    argv = [str(BIN / "ehr-sandbox"), "up", *[str(x) for kv in ports.items() for x in kv]]
    env = {"PRM_SECRET_KEY": TEST_SECRET, "PRM_ENCRYPTION_KEYS": TEST_KEY}
    process = Process("ehr-sandbox-up", argv, tmp_path / "logs", env=env, cwd=tmp_path).start()
    ehr = f"http://localhost:{ports['--port']}/"
    try:
        wait_until(lambda: f"Open the sandbox EHR:  {ehr}" in process.log_tail(200) or not process.alive(), 90,
                   what="the URL to open")
        assert process.alive(), process.log_tail()
        shell = requests.get(ehr, timeout=10)
        assert shell.status_code == 200 and "Bennett" in shell.text
        app = f"http://127.0.0.1:{ports['--app-port']}"
        assert requests.get(f"{app}/healthz", timeout=10).json() == {"status": "ok"}
        assert (tmp_path / "instance" / "prm.db").exists()
        assert (tmp_path / "instance" / "ehr-sandbox" / "sekmet.db").exists(), "the EHR's data kept beside it"
        assert "connection check: OK" in process.log_tail(200)  # backend services work on a first run
        # The app runs on the data set's clock, kept beside its database so `prm` in another shell shares it:
        shared = next(line for line in process.log_tail(200).splitlines() if "export PRM_NOW=" in line)
        value = shared.split("export PRM_NOW=", 1)[1].strip().rstrip(")")
        assert abs(clock_from_setting(value)() - DATASET_NOW) < timedelta(minutes=15)
        assert (tmp_path / "instance" / "demo-clock").read_text(encoding="utf-8").strip() == value

        def lags() -> list[int]:  # `prm` in another shell, no PRM_NOW exported: lags by the demo's clock
            shown = prm("sync", "status", "--json", env=env, cwd=tmp_path)
            assert shown.returncode == 0, shown.stderr
            return [row["lag_s"] for row in json.loads(shown.stdout) if row.get("lag_s") is not None]

        wait_until(lambda: bool(lags()), 60, what="a stream caught up")
        assert max(lags()) < 3600, "by today's clock every lag would be days since the data set's now"
    finally:
        process.stop(signal.SIGTERM, timeout_s=30)
    assert process.proc is not None and process.proc.returncode is not None
    for port in ports.values():  # everything it started has stopped with it
        wait_until(lambda port=port: not _listening(port), 15, what=f"port {port} released")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sync_check_answers_as_a_monitoring_plugin(tmp_path: Path) -> None:
    """`prm sync check` for Nagios, Icinga or Zabbix: its exit code is the level (0 OK, 1 WARNING, 2 CRITICAL,
    3 UNKNOWN) and its one line says why, on the app's clock (the data set's, frozen here)."""
    url = f"sqlite:///{tmp_path / 'prm.db'}"
    env = env_for(url, tmp_path / "instance")
    assert prm("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    assert prm("connection", "add", "--name", "north", "--iss", "https://north.example/fhir", "--client-id", "prm",
               env=env, cwd=tmp_path).returncode == 0
    now = clock_from_setting(env["PRM_NOW"])()

    def caught_up(resource_type: str, behind: timedelta, error: str | None = None) -> None:
        database = Database(url)
        with database.session() as session:
            for stream in streams.ensure(session, session.exec(select(Connection.id)).one() or 0):
                if stream.resource_type == resource_type or resource_type == "*":
                    stream.caught_up_at, stream.last_error = now - behind, error
                    session.add(stream)
            session.commit()
        database.dispose()

    def check(*args: str) -> tuple[int, str]:
        done = prm("sync", "check", *args, env=env, cwd=tmp_path)
        assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
        return done.returncode, done.stdout.strip()

    caught_up("*", timedelta(minutes=2))
    database = Database(url)
    with database.session() as session:  # two refused versions of one Patient, and a refused Location
        connection_id = session.exec(select(Connection.id)).one() or 0
        for resource_type, version in (("Patient", "1"), ("Patient", "2"), ("Location", "1")):
            session.add(QuarantinedResource(connection_id=connection_id, resource_type=resource_type,
                                            fhir_id=f"{resource_type.lower()}-bad", version_id=version,
                                            error="birthDate: does not match", received_at=now))
        session.commit()
    database.dispose()
    assert prm("sync", "pause", "--connection", "north", "--type", "Location", env=env, cwd=tmp_path).returncode == 0
    code, line = check()  # the Patient counts once; the paused Location stream is not judged
    assert code == 1 and line.endswith("quarantined=1 dead_writes=0"), line
    database = Database(url)
    with database.session() as session:
        for row in session.exec(select(QuarantinedResource)):
            row.resolved_at = now
            session.add(row)
        session.commit()
    database.dispose()
    assert prm("sync", "resume", "--connection", "north", "--type", "Location", env=env, cwd=tmp_path).returncode == 0
    assert check() == (0, "OK: 1 connection(s), 9 streams, worst lag 2 min | worst_lag=120s "
                          "failing_streams=0 quarantined=0 dead_writes=0")
    caught_up("Encounter", timedelta(minutes=45), error="HTTP 404 from the EHR: no Patient Jane Example")
    code, line = check()
    assert code == 1 and line.startswith("WARNING: north/Encounter 45 min behind; north/Encounter failing "), line
    assert "Jane" not in line, "stored errors may hold the EHR's words: never in a monitoring system's logs"
    assert check("--warn-lag", "60")[0] == 1, "still failing, though within the lag now asked for"
    caught_up("Encounter", timedelta(hours=3))
    code, line = check()
    assert code == 2 and line.startswith("CRITICAL: north/Encounter 3 h behind "), line
    database = Database(url)
    with database.session() as session:  # due work no worker takes: workers or scheduler stopped
        jobs.plan(session, "sync.stream", 1, now - timedelta(minutes=45))
    database.dispose()
    code, line = check()
    assert code == 2 and "sync.stream job(s) waiting for a worker, the oldest 45 min" in line, line  # (resume woke one)
    code, line = check("--connection", "nowhere")
    assert code == 3 and line.startswith("UNKNOWN: ")
    assert check("--warn-lag", "180", "--crit-lag", "60") == (3, "UNKNOWN: --warn-lag (180) must not exceed "
                                                                   "--crit-lag (60)")
    assert check("--warn-wait", "60")[1] == "UNKNOWN: --warn-wait (60) must not exceed --crit-wait (30)"
    for mistake in (("--warn-lag", "0"), ("--warn-lagg", "5")):  # a usage error is UNKNOWN, not CRITICAL's 2
        code, line = check(*mistake)
        assert code == 3 and line.startswith("UNKNOWN: "), (mistake, line)
    behind = env_for(f"sqlite:///{tmp_path / 'behind.db'}", tmp_path / "instance")  # code upgraded, schema not
    done = prm("sync", "check", env=behind, cwd=tmp_path)
    assert done.returncode == 3 and done.stdout.startswith("UNKNOWN: database: ") and "prm db upgrade" in done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    paused = prm("sync", "pause", "--connection", "north", env=behind, cwd=tmp_path)  # any command: one line
    assert paused.returncode == 2 and "prm db upgrade" in paused.stderr and "Traceback" not in paused.stderr
