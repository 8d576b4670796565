"""A job that fails on an EHR's refusal: the EHR's own words (free text that may name a patient) are kept with
the job for IT and left out of the worker's log, traceback included (DESIGN.md invariant 6)."""

from __future__ import annotations

import logging

import pytest
from sqlmodel import select

from prm import jobs
from prm.config import Settings
from prm.db import Database
from prm.errors import WITHHELD, PermanentEhrError, loggable_traceback
from prm.models import Job
from workers import runtime, tasks
from workers.runtime import WorkerContext

SAID = "Task for Jessica Green (born 1970-08-20): payload 'Hi Jessica, your check-up is due' is invalid"


def refusal() -> PermanentEhrError:
    return PermanentEhrError(f"POST https://ehr.example/fhir/Task -> HTTP 422: {SAID}", 422, ("invalid",),
                             ehr_said=SAID)


def test_a_failed_jobs_log_line_leaves_the_ehrs_words_out(database: Database, settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    def refused(ctx: WorkerContext, job: Job) -> None:
        raise refusal()

    ctx = runtime.build(settings)
    runtime.install(ctx)
    monkeypatch.setitem(tasks.HANDLERS, "test.refused", refused)
    try:
        with ctx.db.session() as session:
            jobs.plan(session, "test.refused", 1, settings.clock())
        with database.session() as session:
            job_id = session.exec(select(Job.id).where(Job.kind == "test.refused")).one()
        with caplog.at_level(logging.INFO):
            tasks.run_job(job_id)
        with database.session() as session:
            stored = session.get(Job, job_id)
    finally:
        runtime.install(None)
        ctx.db.dispose()
    assert stored is not None and stored.status == "pending" and SAID in (stored.last_error or "")
    assert "Traceback" in caplog.text and "PermanentEhrError" in caplog.text and WITHHELD in caplog.text
    assert SAID not in caplog.text and "Jessica" not in caplog.text


def test_the_ehrs_words_are_left_out_wherever_they_are_in_a_chain() -> None:
    """An EhrError caught and another exception raised from it, or while handling it: its words are still out."""
    for chain in ("from", "during"):
        try:
            try:
                raise refusal()
            except PermanentEhrError as exc:
                if chain == "from":
                    raise RuntimeError("the write-back step stopped") from exc
                raise RuntimeError("the write-back step stopped")  # noqa: B904 - the implicit chain is the point
        except RuntimeError as outer:
            text = loggable_traceback(outer)
        assert "PermanentEhrError" in text and "RuntimeError" in text and WITHHELD in text and SAID not in text
