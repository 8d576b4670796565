"""Near-real-time sync, end to end: `prm serve` subscribes to the sandbox EHR's topics (R4 Subscriptions
Backport, rest-hook, id-only), the EHR's notifications reach its hook, and the streams they wake bring the
change into the snapshot within seconds, although polling would not come for an hour. A Subscription the EHR
put in error is re-activated by the next check, with a new secret, and notifications flow again; one the EHR
lost is made again as soon as IT checks the connection.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import requests
from sqlmodel import col, select, update

from ehr_sandbox.config import SandboxConfig
from fhir_mappings.subscriptions import CRITERIA, filters_of
from fhir_mappings.written import IDENTIFIER_SYSTEM
from prm.connections import DEFAULT_BACKEND_SCOPES, SUBSCRIPTION_SCOPES
from prm.models import Connection, Job
from prm.snapshot_models import EhrSubscription, SyncStream
from tests.integration.sync_env import SyncEnv, sync_database, sync_env
from tests.integration.test_admin_pages import PASSWORD, Admin
from tests.support.fault_proxy import FaultyEhr
from tests.support.ports import free_port
from tests.support.processes import BIN, Process, RedisServer, prm_process, stop_all, wait_http_ok, wait_until
from tests.support.settings import env_for
from workers import subscriptions
from workers.connection_check import check_connection
from workers.runtime import WorkerContext
from workers.sync import SYNC_STREAM

SUBSCRIBING_SCOPES = f"{DEFAULT_BACKEND_SCOPES} {SUBSCRIPTION_SCOPES}"
TOPIC_BASE = "http://sekmet.dev/fhir/SubscriptionTopic"
# the sandbox's topics that fire on types we sync (its report and order topics do not); task-status is the
# sandbox's own (ehr_sandbox.topics), the others sekmet's
WANTED = {f"{TOPIC_BASE}/{name}": types for name, types in (
    ("encounter-start", ["Encounter"]), ("encounter-complete", ["Encounter"]),
    ("appointment-booked", ["Appointment"]), ("patient-change", ["Patient"]), ("task-status", ["Task"]))}
TASK_TOPIC = f"{TOPIC_BASE}/task-status"
OUR_TASKS = f"Task?identifier={IDENTIFIER_SYSTEM}|"


def subscription_rows(env: SyncEnv) -> dict[str, EhrSubscription]:
    with env.ctx.db.session() as session:
        rows = list(session.exec(select(EhrSubscription)))
        for row in rows:
            session.expunge(row)
    return {row.topic: row for row in rows}


def all_active(env: SyncEnv) -> bool:
    """Every wanted topic's row is active (its handshake reached our hook) and so is the EHR's copy (which the
    EHR sets only once our hook has answered the handshake: a moment later)."""
    rows = subscription_rows(env)
    return set(rows) == set(WANTED) and all(
        row.status == "active" and row.ehr_id is not None
        and env.read("Subscription", row.ehr_id).get("status") == "active" for row in rows.values())


def polling_an_hour_away(env: SyncEnv) -> bool:
    """Every stream has run since the app started and will not poll again for an hour."""
    with env.ctx.db.session() as session:
        open_jobs = list(session.exec(select(Job).where(Job.kind == SYNC_STREAM,
                                                        col(Job.status).in_(("pending", "running")))))
        stream_count = len(list(session.exec(select(SyncStream.id))))
    later = env.ctx.settings.clock() + timedelta(minutes=30)
    return len(open_jobs) == stream_count and all(
        job.status == "pending" and job.due_at is not None and job.due_at > later for job in open_jobs)


def stream_polls_an_hour_away(env: SyncEnv, resource_type: str) -> bool:
    """That stream has run since the app started, none of its jobs is running, and its next is an hour away."""
    with env.ctx.db.session() as session:
        open_jobs = list(session.exec(select(Job).join(SyncStream, col(SyncStream.id) == Job.subject_id).where(
            Job.kind == SYNC_STREAM, SyncStream.resource_type == resource_type,
            col(Job.status).in_(("pending", "running")))))
    later = env.ctx.settings.clock() + timedelta(minutes=30)
    return bool(open_jobs) and all(
        job.status == "pending" and job.due_at is not None and job.due_at > later for job in open_jobs)


def prm_cli(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([str(BIN / "prm"), *args], env=env, cwd=cwd, capture_output=True, text=True, input=stdin,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def changed(resource: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {k: v for k, v in {**resource, **fields}.items() if k != "meta"}


def first(env: SyncEnv, search: str) -> dict[str, Any]:
    bundle = requests.get(f"{env.stack.fhir_internal_url}/{search}&_count=1", timeout=30).json()
    return dict(bundle["entry"][0]["resource"])


def a_visit_finishes(env: SyncEnv, how: str = "") -> None:
    """An Encounter in progress finishes in the EHR; the snapshot has it within seconds."""
    env.put(changed(first(env, "Encounter?status=in-progress"), status="finished"))
    wait_until(lambda: env.snapshot("Encounter") == env.server("Encounter"), 30,
               what=f"the finished Encounter in the snapshot{how}")


def the_ehrs_task_then_ours_opened_and_closed(env: SyncEnv, patient_id: str) -> None:
    """A Task of the EHR's own, then one of ours, opened and then closed by the care team in the EHR; each
    version of ours reaches the snapshot within seconds."""
    task = {"resourceType": "Task", "id": "prm-ticket-hook", "status": "requested", "intent": "order",
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": "ticket-hook"}],
            "for": {"reference": f"Patient/{patient_id}"}, "description": "Call back about the bill"}
    env.put({**task, "id": "ehr-own-task", "identifier": [{"system": "urn:ehr:tasks", "value": "t1"}]})
    for status in ("requested", "completed"):
        env.put({**task, "status": status})
        version = env.read("Task", task["id"])["meta"]["versionId"]
        wait_until(lambda version=version: (task["id"], version) in env.snapshot("Task"), 30,
                   what=f"the {status} Task in the snapshot")


def serving(env: SyncEnv, tmp_path: Path) -> tuple[int, WorkerContext, dict[str, str], Process]:
    """Every stream synced once and polling an hour away (so only a notification can be quick), then `prm serve`
    on the env's database, its hooks at its own port, answering: (port, a context as deployed there, its
    environment, the process)."""
    env.run_all()
    with env.ctx.db.session() as session:
        session.execute(update(SyncStream).values(interval_s=3600))
    port = free_port()
    settings = env.ctx.settings
    as_deployed = dataclasses.replace(env.ctx, settings=dataclasses.replace(
        settings, public_url=f"http://127.0.0.1:{port}"))
    app_env = env_for(settings.database_url, tmp_path / "instance", PRM_PUBLIC_URL=f"http://127.0.0.1:{port}",
                      PRM_NOW=settings.now or "", PRM_SWEEP_INTERVAL_S="0.5", PRM_HEALTH_CHECK_INTERVAL_S="3600")
    app = prm_process("app", ["serve", "--port", str(port)], tmp_path / "logs", app_env, tmp_path).start()
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=app)
    except BaseException:
        app.stop()
        raise
    return port, as_deployed, app_env, app


def test_notifications_bring_changes_in_within_seconds_and_a_subscription_in_error_is_renewed(
        tmp_path: Path) -> None:
    with sync_env(tmp_path, patients=70) as env:
        env.grant_backend_scopes(SUBSCRIBING_SCOPES)
        profile = check_connection(env.ctx, env.connection_id)
        assert profile["subscriptions"]["usable"] is True
        assert set(WANTED) <= set(profile["subscriptions"]["topics"])
        port, as_deployed, app_env, app = serving(env, tmp_path)
        try:
            wait_until(lambda: all_active(env), 60, what="a handshake answered for every wanted topic")
            rows = subscription_rows(env)
            assert {topic: row.resource_types for topic, row in rows.items()} == WANTED
            for row in rows.values():  # id-only, our secret, our hook: as the EHR holds it
                copy = env.read("Subscription", row.ehr_id or "")
                assert copy["status"] == "active"
                assert copy["channel"]["endpoint"] == f"http://127.0.0.1:{port}/fhir/hooks/{row.hook_key}"
            wait_until(lambda: polling_an_hour_away(env), 60, what="the app's first runs of every stream")

            a_visit_finishes(env)
            patient = first(env, "Patient?active=true")
            env.put(changed(patient, gender="other" if patient.get("gender") != "other" else "unknown"))
            wait_until(lambda: env.snapshot("Patient") == env.server("Patient"), 30,
                       what="the changed Patient in the snapshot")
            assert subscription_rows(env)[f"{TOPIC_BASE}/encounter-complete"].notifications >= 1
            tasks = rows[TASK_TOPIC]  # it asks to hear only of the Tasks we wrote (the topic filters by identifier)
            assert filters_of(env.read("Subscription", tasks.ehr_id or "")) == (OUR_TASKS,)
            the_ehrs_task_then_ours_opened_and_closed(env, patient["id"])
            # ours twice; the EHR's own Task, never (a run woken by the first may store the second before its
            # notification is counted: wait for it, then see nothing more came)
            wait_until(lambda: subscription_rows(env)[TASK_TOPIC].events_seen >= 2, 30, what="both Task events")
            assert subscription_rows(env)[TASK_TOPIC].events_seen == 2

            copy = env.read("Subscription", tasks.ehr_id or "")  # as an older fhir-prm asked: no filter
            env.put(changed(copy, _criteria=None))
            run = subscriptions.ensure(as_deployed, env.connection_id)
            assert run is not None and (run.reactivated, run.created, run.errors) == (1, 0, [])
            assert filters_of(env.read("Subscription", tasks.ehr_id or "")) == (OUR_TASKS,)
            wait_until(lambda: all_active(env), 30, what="the re-filtered subscription's handshake")

            complete = rows[f"{TOPIC_BASE}/encounter-complete"]
            copy = env.read("Subscription", complete.ehr_id or "")
            env.put(changed(copy, status="error", error="deliveries failed"))  # as when our hook was down
            run = subscriptions.ensure(as_deployed, env.connection_id)  # as the app's next check would
            assert run is not None and (run.reactivated, run.created, run.errors) == (1, 0, [])
            wait_until(lambda: all_active(env), 30, what="the re-activated subscription's handshake")
            assert subscription_rows(env)[complete.topic].secret_hash != complete.secret_hash
            assert env.read("Subscription", complete.ehr_id or "")["status"] == "active"

            a_visit_finishes(env, ", through the renewed subscription")
            wait_until(lambda: polling_an_hour_away(env), 30, what="the woken streams' next polls an hour away")

            lost = rows[f"{TOPIC_BASE}/patient-change"]  # the EHR lost ours (restored from a backup, say)
            env.delete("Subscription", lost.ehr_id or "")
            check_connection(as_deployed, env.connection_id)  # IT checks the connection: ours are checked at once
            wait_until(lambda: all_active(env) and subscription_rows(env)[lost.topic].ehr_id != lost.ehr_id, 30,
                       what="a new subscription for the one the EHR lost, well before the 10-minute check")

            booked = rows[f"{TOPIC_BASE}/appointment-booked"]  # the EHR withdraws a topic: ours goes off too
            env.delete("Basic", "topic-appointment-booked")
            run = subscriptions.ensure(as_deployed, env.connection_id)
            assert run is not None and (run.switched_off, run.reactivated, run.created) == (1, 0, 0)
            assert subscription_rows(env)[booked.topic].status == "off"
            assert env.read("Subscription", booked.ehr_id or "")["status"] == "off"
            assert requests.post(f"http://127.0.0.1:{port}/fhir/hooks/{booked.hook_key}", json={},
                                 timeout=10).status_code == 404
            expected = {(t, "off" if t == booked.topic else "active") for t in WANTED}

            shown = [row for row in json.loads(prm_cli(app_env, tmp_path, "sync", "status", "--json"))
                     if "subscription" in row]  # what IT sees: on the CLI and the admin page
            assert {(row["subscription"], row["status"]) for row in shown} == expected
            prm_cli(app_env, tmp_path, "admin", "add", "it.subs", "--role", "it_admin", stdin=f"{PASSWORD}\n")
            admin = Admin(f"http://127.0.0.1:{port}")
            assert admin.sign_in("it.subs").status_code == 303
            page = admin.get("/admin/connections/ehr").text
            assert 'id="subscriptions"' in page and page.count("<td>active</td>") == len(WANTED) - 1
            env.grant_backend_scopes(f"{DEFAULT_BACKEND_SCOPES} system/Subscription.cru")  # Basic.rs forgotten
            run = subscriptions.ensure(as_deployed, env.connection_id)
            assert run is not None and run.errors and (run.created, run.switched_off) == (0, 0)
            with env.ctx.db.session() as session:
                flagged = session.get(Connection, env.connection_id)
                assert flagged is not None and "Grant system/Basic.rs" in (flagged.needs_it or "")
            assert {row.status for row in subscription_rows(env).values()} == {"active", "off"}  # left as they were
        finally:
            app.stop()
            print(f"--- app ---\n{app.log_tail(40)}")


def test_an_ehr_with_plain_r4_subscriptions_only_wakes_streams_by_search(tmp_path: Path) -> None:
    """No topics: one plain R4 Subscription per search in CRITERIA, active when the EHR's copy says so (there is
    no handshake), and its empty notifications wake the streams; the EHR's own Tasks match no search of ours."""
    with sync_env(tmp_path, profile="criteria-subscriptions", patients=70) as env:
        env.grant_backend_scopes(f"{DEFAULT_BACKEND_SCOPES} system/Subscription.cru")  # no topics to read
        support = check_connection(env.ctx, env.connection_id)["subscriptions"]
        assert (support["mode"], support["backport"], support["usable"]) == ("criteria", False, True)
        port, _, _, app = serving(env, tmp_path)
        try:
            wanted = {criteria: "active" for criteria in CRITERIA.values()}
            wait_until(lambda: {t: r.status for t, r in subscription_rows(env).items()} == wanted, 60,
                       what="an active plain R4 Subscription for every search")
            for row in subscription_rows(env).values():
                copy = env.read("Subscription", row.ehr_id or "")
                assert (row.kind, copy["criteria"], copy["status"]) == ("criteria", row.topic, "active")
                assert copy["channel"]["endpoint"] == f"http://127.0.0.1:{port}/fhir/hooks/{row.hook_key}"
                assert "payload" not in copy["channel"]  # empty notifications: no data to the hook
            wait_until(lambda: polling_an_hour_away(env), 60, what="the app's first runs of every stream")

            a_visit_finishes(env)
            the_ehrs_task_then_ours_opened_and_closed(env, first(env, "Patient?active=true")["id"])
            wait_until(lambda: subscription_rows(env)[CRITERIA["Task"]].notifications >= 2, 30,
                       what="both Task notifications")  # as above: the second may trail its version
            assert subscription_rows(env)[CRITERIA["Task"]].notifications == 2  # ours; the EHR's own, none
            assert subscription_rows(env)[CRITERIA["Encounter"]].notifications >= 1
        finally:
            app.stop()
            print(f"--- app ---\n{app.log_tail(40)}")


def ehr_copies(env: SyncEnv, endpoint: str) -> list[dict[str, Any]]:
    bundle = requests.get(f"{env.stack.fhir_internal_url}/Subscription", params={"url": endpoint},
                          timeout=30).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


def secret_hash_of(copy: dict[str, Any]) -> str:
    headers = [h for h in copy["channel"].get("header", []) if h.startswith("Authorization: Bearer ")]
    assert len(headers) == 1, copy["channel"]
    return hashlib.sha256(headers[0].removeprefix("Authorization: Bearer ").encode()).hexdigest()


def test_a_create_whose_answer_was_lost_leaves_one_subscription_with_the_current_secret(tmp_path: Path) -> None:
    """The EHR made our Subscription but its answer never came (we hold no id for it). The next check must
    find that copy (If-None-Exist on our endpoint), not make a second one, and give it the current secret:
    otherwise the EHR would notify twice, or with a secret the hook refuses."""
    hook_base = f"http://127.0.0.1:{free_port()}"  # nobody listens: handshakes fail, as when the app is down
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0)) as faulty, \
            sync_database(faulty.stack, tmp_path, public_url=hook_base) as env:
        env.grant_backend_scopes(SUBSCRIBING_SCOPES)
        assert check_connection(env.ctx, env.connection_id)["subscriptions"]["usable"] is True
        lost = faulty.proxy.add_fault(r"^/fhir/Subscription$", method="POST", lose_answer=True)

        first_run = subscriptions.ensure(env.ctx, env.connection_id)
        assert lost.times == 0 and faulty.proxy.count("POST", r"^/fhir/Subscription$") == len(WANTED)
        assert first_run is not None and len(first_run.errors) == 1, first_run.errors
        unanswered = subscription_rows(env)[first_run.errors[0].split(": ", 1)[0]]
        assert (unanswered.status, unanswered.ehr_id) == ("error", None)
        endpoint = f"{hook_base}/fhir/hooks/{unanswered.hook_key}"
        assert len(ehr_copies(env, endpoint)) == 1  # the EHR did make it

        second_run = subscriptions.ensure(env.ctx, env.connection_id)
        assert second_run is not None and second_run.errors == []
        rows = subscription_rows(env)
        assert set(rows) == set(WANTED)
        for row in rows.values():  # one copy per topic, the one we hold, carrying the secret we check
            copies = ehr_copies(env, f"{hook_base}/fhir/hooks/{row.hook_key}")
            assert [c["id"] for c in copies] == [row.ehr_id], row.topic
            assert secret_hash_of(copies[0]) == row.secret_hash, row.topic
        assert rows[unanswered.topic].secret_hash != unanswered.secret_hash  # renewed, not the one sent blind


def test_a_copy_the_ehr_changed_while_we_replaced_it_is_read_again_and_replaced(tmp_path: Path) -> None:
    """The EHR changes its copies itself (a status after a handshake or failed deliveries). A copy that moved
    on between our read and our versioned PUT is answered 412 by the EHR: read it again, send ours once more."""
    hook_base = f"http://127.0.0.1:{free_port()}"
    with FaultyEhr(SandboxConfig(port=0, fhir_internal_port=0)) as faulty, \
            sync_database(faulty.stack, tmp_path, public_url=hook_base) as env:
        env.grant_backend_scopes(SUBSCRIBING_SCOPES)
        assert check_connection(env.ctx, env.connection_id)["subscriptions"]["usable"] is True
        subscriptions.ensure(env.ctx, env.connection_id)  # nobody listens at the hook: handshakes fail
        row = subscription_rows(env)[TASK_TOPIC]
        copy = env.read("Subscription", row.ehr_id or "")
        env.put(changed(copy, status="error", error="deliveries failed"))  # it needs replacing

        def the_ehr_moves_it_on() -> None:
            env.put(changed(env.read("Subscription", row.ehr_id or ""), reason="touched by the EHR"))

        moved = faulty.proxy.add_fault(rf"^/fhir/Subscription/{row.ehr_id}$", method="PUT",
                                       before=the_ehr_moves_it_on)
        run = subscriptions.ensure(env.ctx, env.connection_id)
        assert moved.times == 0 and faulty.proxy.count("PUT", rf"^/fhir/Subscription/{row.ehr_id}$") == 2
        assert run is not None and run.errors == [] and run.reactivated >= 1
        renewed = subscription_rows(env)[TASK_TOPIC]
        assert secret_hash_of(env.read("Subscription", row.ehr_id or "")) == renewed.secret_hash != row.secret_hash


def test_with_celery_on_redis_a_notification_reaches_a_worker_through_the_queue(tmp_path: Path) -> None:
    """As deployed with Redis: `prm serve` hears the EHR, and the stream it wakes is run by a `prm worker`.
    Beat (the sweeper) is stopped first, so the hook's own enqueue is the only way the woken job reaches the
    queue; polling is an hour away."""
    redis = RedisServer(free_port(), tmp_path / "logs").start()
    processes: list[Process] = []
    try:
        with sync_env(tmp_path, patients=70) as env:
            try:
                env.grant_backend_scopes(SUBSCRIBING_SCOPES)
                assert check_connection(env.ctx, env.connection_id)["subscriptions"]["usable"] is True
                env.run_all()
                with env.ctx.db.session() as session:
                    session.execute(update(SyncStream).values(interval_s=3600))
                port = free_port()
                settings = env.ctx.settings
                process_env = env_for(settings.database_url, tmp_path / "instance", PRM_REDIS_URL=redis.url,
                                      PRM_PUBLIC_URL=f"http://127.0.0.1:{port}", PRM_NOW=settings.now or "",
                                      PRM_SWEEP_INTERVAL_S="0.5", PRM_JOB_LEASE_S="10",
                                      PRM_HEALTH_CHECK_INTERVAL_S="3600")
                for name, args in (("app", ["serve", "--port", str(port)]),
                                   ("worker", ["worker", "--concurrency", "2"]), ("beat", ["beat"])):
                    processes.append(prm_process(name, args, tmp_path / "logs", process_env, tmp_path).start())
                _notified_through_redis(env, port, *processes)
            finally:  # before the database goes
                stop_all(processes, redis)
    finally:
        redis.stop()


def _notified_through_redis(env: SyncEnv, port: int, app: Process, worker: Process, beat: Process) -> None:
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", process=app)
    wait_until(lambda: all_active(env), 90, what="a handshake answered for every wanted topic")
    # Only the Encounter stream matters here; a stream whose two runs met is tried again a job lease later.
    wait_until(lambda: stream_polls_an_hour_away(env, "Encounter"), 90,
               what="the worker's first Encounter run, the next an hour away")
    beat.stop()  # no sweeps from here on

    a_visit_finishes(env, ", through the hook, Redis and the worker")
    assert worker.alive() and app.alive()
    with env.ctx.db.session() as session:
        ran = session.exec(select(Job).join(SyncStream, col(SyncStream.id) == Job.subject_id).where(
            Job.kind == SYNC_STREAM, SyncStream.resource_type == "Encounter", Job.status == "done")
            .order_by(col(Job.finished_at).desc())).first()
    assert ran is not None and ran.claimed_by is not None
    assert f":{app.proc.pid if app.proc else 0}:" not in ran.claimed_by  # the worker ran it, not the app
