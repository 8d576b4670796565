"""A stream asked to read everything again (IT after a restore at the EHR; an upgrade that keeps a new field):
every resource is read and written as it maps now, on a search EHR and patient by patient, while the
sync stays gap-free around it; an ask made during a reload gets a pass of its own."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import select

from prm import audit, streams
from prm.errors import ValidationError
from prm.snapshot_models import Booking, SyncStream, Visit
from tests.integration.sync_env import SyncEnv, sync_env
from workers.connection_check import check_connection
from workers.sync_engine import run_stream
from workers.sync_run import StreamRun
from workers.sync_windows import RELOADED

IT = audit.Actor(kind="admin", name="it-admin", role="it_admin")


def forget_words(env: SyncEnv) -> None:
    """The snapshot as a version before `type_text` left it: the codes, not the words."""
    with env.ctx.db.session() as session:
        for table in (Visit, Booking):
            session.execute(update(table).values(type_text=None))


def without_words(env: SyncEnv) -> tuple[int, int]:
    with env.ctx.db.session() as session:
        return tuple(len(session.exec(select(table.fhir_id).where(  # type: ignore[attr-defined]
            table.type_text.is_(None), table.deleted.is_(False))).all()) for table in (Visit, Booking))  # type: ignore[union-attr, attr-defined]


def stream_of(env: SyncEnv, resource_type: str) -> SyncStream:
    with env.ctx.db.session() as session:
        [stream] = [s for s in streams.of_connection(session, env.connection_id) if s.resource_type == resource_type]
        return stream


def ask(env: SyncEnv, *types: str) -> list[str]:
    with env.ctx.db.session() as session:
        return [s.resource_type for s in streams.ask_reload(session, env.ctx.settings.clock, IT, env.connection_id,
                                                            types)]


def assert_in_step(env: SyncEnv, *types: str) -> None:
    for resource_type in types:
        assert env.snapshot(resource_type) == env.server(resource_type), resource_type


def test_a_reload_reads_everything_again_and_the_sync_goes_on_around_it(tmp_path: Path) -> None:
    with sync_env(tmp_path) as env:
        env.run_all(("Encounter", "Appointment"))
        env.run_all(("Encounter", "Appointment"))  # past the first load: the history mark is set
        forget_words(env)
        assert without_words(env) == (2294, 1031)
        changed = copy.deepcopy(env.read("Encounter", "enc-000004-002"))
        changed["status"] = "cancelled" if changed["status"] != "cancelled" else "finished"
        env.put(changed)
        env.delete("Appointment", "appt-000004-001")

        assert ask(env, "Encounter", "Appointment") == ["Encounter", "Appointment"]
        runs = env.run_all(("Encounter", "Appointment"))
        assert all(RELOADED in run.notes and run.caught_up for run in runs.values())
        assert runs["Encounter"].stored == 2294 and runs["Appointment"].deleted == 1
        assert without_words(env) == (0, 0)
        assert_in_step(env, "Encounter", "Appointment")
        ended = stream_of(env, "Encounter")
        assert (ended.reload_asked, ended.reload_served, ended.reload_serving) == (1, 1, None)

        again = env.run_all(("Encounter", "Appointment"))  # served: back to what changed only
        assert all(run.notes == ["unchanged (_history)"] for run in again.values())
        changed = copy.deepcopy(env.read("Encounter", "enc-000004-003"))
        changed["status"] = "cancelled" if changed["status"] != "cancelled" else "finished"
        env.put(changed)
        assert env.run_all(("Encounter",))["Encounter"].stored == 1
        assert_in_step(env, "Encounter")


def test_a_reload_longer_than_a_run_misses_no_change_and_an_ask_made_meanwhile_gets_a_pass_of_its_own(
        tmp_path: Path) -> None:
    """A reload longer than a run goes on where the run stopped (one page a run here: no time to spare). A
    change made mid-pass is stored by the next run, from `_history` (sekmet lists a changed resource last, so
    the pass alone would bring it only at its end); an ask made meanwhile is not taken as served by the pass
    that began before it."""
    with sync_env(tmp_path) as env:
        env.run_all(("Encounter",))
        env.run_all(("Encounter",))
        stream_id = stream_of(env, "Encounter").id or 0

        def reload_to_the_end() -> list[StreamRun]:
            runs = [run_stream(env.ctx, stream_id, time_budget_s=0)]
            while not runs[-1].caught_up and len(runs) < 10:
                runs.append(run_stream(env.ctx, stream_id, time_budget_s=0))
            return runs

        ask(env, "Encounter")
        first = run_stream(env.ctx, stream_id, time_budget_s=0)
        assert not first.caught_up and stream_of(env, "Encounter").reload_serving == 1
        changed_ids = ("enc-000001-001", "enc-000150-002", "enc-000300-003")  # pages read or not yet
        for resource_id in changed_ids:
            changed = copy.deepcopy(env.read("Encounter", resource_id))
            changed["status"] = "cancelled" if changed["status"] != "cancelled" else "finished"
            env.put(changed)
        second = run_stream(env.ctx, stream_id, time_budget_s=0)
        assert not second.caught_up, "the pass goes on"
        held, server = dict(env.snapshot("Encounter")), dict(env.server("Encounter"))
        assert [held[i] for i in changed_ids] == [server[i] for i in changed_ids], \
            "a change made mid-pass is stored by the next run (from _history), not held back until the pass ends"
        assert len([first, second, *reload_to_the_end()]) == 3, "2,294 visits in pages of 1,000: three runs"
        assert (stream_of(env, "Encounter").reload_asked, stream_of(env, "Encounter").reload_served) == (1, 1)
        after = run_stream(env.ctx, stream_id, time_budget_s=600)
        assert RELOADED not in after.notes
        assert_in_step(env, "Encounter")

        ask(env, "Encounter")
        assert not run_stream(env.ctx, stream_id, time_budget_s=0).caught_up
        forget_words(env)  # after the pass's first page: only a pass of its own brings those words back
        ask(env, "Encounter")
        reload_to_the_end()
        assert (stream_of(env, "Encounter").reload_asked, stream_of(env, "Encounter").reload_served) == (3, 2)
        assert without_words(env)[0] > 0
        second = run_stream(env.ctx, stream_id, time_budget_s=600)
        assert RELOADED in second.notes and second.caught_up
        ended = stream_of(env, "Encounter")
        assert (ended.reload_asked, ended.reload_served, ended.reload_serving) == (3, 3, None)
        assert without_words(env)[0] == 0
        assert_in_step(env, "Encounter")


def test_a_patient_by_patient_reload_reads_every_patients_whole_record(tmp_path: Path) -> None:
    with sync_env(tmp_path, profile="patient-scoped-only", patients=70) as env:
        check_connection(env.ctx, env.connection_id)
        env.run_all(("Patient", "Encounter"))
        forget_words(env)
        words_lost = without_words(env)[0]
        assert words_lost > 0
        ask(env, "Encounter")
        runs = env.run_all(("Patient", "Encounter"))
        assert runs["Encounter"].stored == words_lost and runs["Encounter"].caught_up
        assert any(note.startswith("patient by patient") for note in runs["Encounter"].notes)
        assert without_words(env)[0] == 0
        assert_in_step(env, "Encounter")
        with env.ctx.db.session() as session:
            stream = streams.get(session, stream_of(env, "Encounter").id or 0)
            known = streams.patients_read(session, stream.id or 0)
        assert (stream.reload_served, stream.reload_serving) == (1, None)
        assert known == {i for i, _ in env.server("Patient")}, "every patient read whole again"


def test_a_stream_still_loading_is_not_asked_and_an_unknown_type_is_refused(tmp_path: Path) -> None:
    with sync_env(tmp_path) as env:
        env.run_all(("Location",))
        assert ask(env) == ["Location"], "the others have not loaded yet: they read everything anyway"
        with pytest.raises(ValidationError, match="not a synced type: Observation"):
            ask(env, "Observation")
