"""The embedded default (no Redis): one scheduler per deployment, due work runs in-process exactly once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from ehr_sandbox.stack import SandboxStack
from prm import connections
from prm.clock import running_from
from prm.migrate import upgrade
from prm.models import Connection, Job
from tests.support.processes import wait_until
from tests.support.settings import make_settings
from workers import runtime
from workers.embedded import EmbeddedRunner

pytestmark = pytest.mark.serial  # a scheduler lease raced by two processes: alone, after the parallel part


def test_two_app_processes_never_run_two_schedulers(sandbox: SandboxStack, tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'prm.db'}", tmp_path / "instance",
                             now=running_from(datetime(2026, 11, 20, 12, tzinfo=UTC)), sweep_interval_s=0.3,
                             health_check_interval_s=1.0)
    first, second = runtime.build(settings), runtime.build(settings)
    first.name, second.name = "app-1", "app-2"
    upgrade(first.db)
    with first.db.session() as session:
        connections.upsert(session, settings.clock, first.box,
                           connections.ConnectionSpec(name="sandbox", iss=sandbox.iss, client_id="fhir-prm"))
    runtime.install(first)  # task bodies in this process resolve their context here
    runner_a, runner_b = EmbeddedRunner(first), EmbeddedRunner(second)
    runner_a.tick()
    runner_b.tick()
    assert runner_a.holds_lease and not runner_b.holds_lease

    runner_a.start()
    runner_b.start()
    try:
        def checks_done() -> int:
            with first.db.session() as session:
                return len(session.exec(select(Job).where(Job.status == "done")).all())

        wait_until(lambda: checks_done() >= 3, 30, what="three periodic health checks")
        assert runner_a.holds_lease and not runner_b.holds_lease
        runner_a.stop()  # releases the lease: the other process takes over on its next tick
        wait_until(lambda: runner_b.holds_lease, 10, what="the second scheduler taking over")
        taken_over_at = checks_done()
        wait_until(lambda: checks_done() > taken_over_at, 30, what="checks run by the second scheduler")
    finally:
        runner_a.stop()
        runner_b.stop()
        runtime.install(None)
    with first.db.session() as session:
        jobs = session.exec(select(Job)).all()
        connection = session.exec(select(Connection)).one()
    assert all(job.runs <= 1 for job in jobs)
    slots = [job.due_at for job in jobs]
    assert len(slots) == len(set(slots)), "a slot is planned once"
    assert connection.health_status == "ok" and connection.health_detail["metadata"]["fhirVersion"] == "4.0.1"
    first.db.dispose()
    second.db.dispose()
