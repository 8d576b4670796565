"""A shared export's leases taken, renewed and released together: each held by one worker at a time."""

from __future__ import annotations

import dataclasses

import pytest
from sqlmodel import select

from prm import connections, leases, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import Lease
from workers.runtime import WorkerContext, build
from workers.stream_leases import StreamLease, release_together, renew_together


def holders(database: Database) -> dict[str, str]:
    with database.session() as session:
        return {row.name: row.holder for row in session.exec(select(Lease))}


def test_leases_taken_together_skip_the_one_another_worker_holds_and_release_only_their_own(
        database: Database, settings: Settings) -> None:
    ours: WorkerContext = dataclasses.replace(build(settings), name="worker-a")
    theirs: WorkerContext = dataclasses.replace(ours, name="worker-b")
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        patient, encounter, appointment = streams.ensure(session, row.id or 0, ("Patient", "Encounter", "Appointment"))
    assert StreamLease(theirs, encounter).renew()

    wanted = [StreamLease(ours, patient), StreamLease(ours, encounter), StreamLease(ours, appointment)]
    assert renew_together(ours, wanted) == [True, False, True]
    names = [lease.name for lease in wanted]
    assert holders(database) == {names[0]: "worker-a", names[1]: "worker-b", names[2]: "worker-a"}
    assert renew_together(ours, wanted) == [True, False, True]  # asked again: ours stay held, theirs stays theirs

    release_together(ours, wanted)
    assert holders(database) == {names[1]: "worker-b"}  # theirs stays theirs
    with database.session() as session:
        assert leases.acquire(session, names[0], "worker-b", settings.clock(), 60)  # ours are free again
    ours.db.dispose()


def test_a_lease_taken_and_given_up_within_a_runs_own_transactions(database: Database, settings: Settings) -> None:
    """A run takes its lease in the transaction that reads its stream and gives it up in the one that records
    its success. If that transaction rolls back, the lease is still held, and the run's closing release frees
    it; once it commits, the closing release has nothing left to do."""
    ctx: WorkerContext = dataclasses.replace(build(settings), name="worker-a")
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        (patient,) = streams.ensure(session, row.id or 0, ("Patient",))
    lease = StreamLease(ctx, patient)
    with database.session() as session:
        assert lease.take_in(session)
    assert holders(database) == {lease.name: "worker-a"}

    class Failed(Exception):
        pass

    with pytest.raises(Failed), database.session() as session:
        lease.release_in(session)
        raise Failed  # the success commit never happens
    assert holders(database) == {lease.name: "worker-a"}
    release_together(ctx, [lease])
    assert holders(database) == {}

    with database.session() as session:
        assert lease.take_in(session)
    with database.session() as session:
        lease.release_in(session)
    assert holders(database) == {}
    with database.session() as session:  # another worker takes the stream before the closing release
        assert leases.acquire(session, lease.name, "worker-b", settings.clock(), 60)
    release_together(ctx, [lease])
    assert holders(database) == {lease.name: "worker-b"}
    ctx.db.dispose()
