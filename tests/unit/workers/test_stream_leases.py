"""A shared export's leases taken, renewed and released together: each held by one worker at a time."""

from __future__ import annotations

import dataclasses

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
