"""The patients who left the Group a connection's population is: their records go from the snapshot.

Why: IT names an export Group so that the PRM holds that clinic's patients and nobody else's (workers.
sync_strategy.group_population). A patient who leaves it (moved to another practice, taken off the list,
marked inactive in the Group) is no longer one of them. Kept, their record would stay in the PRM, no longer
read by any pass (every pass reads the population), so growing stale while still shown to staff and still
reminded and recalled. So each Patient run after the first load reads the Group once and erases, with
`prm.snapshot_erase.erase_patients`, the held patients who are neither members nor merged with one, either
way (`sync_population.population_of`). Their rows, their open quarantined resources and every stream's note
that it read them whole go: one who joins again is read whole again, as any newcomer. A group session (or a
family's appointment) stays while a patient it names is in the population, whoever it names first, and goes
once none is.

Who left is told only from a Group fhir-prm can read whole: one that lists no members (far likelier a mistake
at the EHR than every patient leaving at once) or names some by no readable Patient reference (an identifier
only) erases nobody, and the note says so (IT can erase the whole copy: `prm sync erase`). The held patients
are those any patient-keyed row names, not only those with a Patient row: a row stored without its patient's
leaves too. A worker syncing another of the patient's types at that moment postpones the erasure to a later
Patient run. What the PRM itself made about a patient (care tickets, outreach, the audit trail) is kept under
its own rules.
"""

from __future__ import annotations

import logging

from fhir_mappings.common import patients_named
from prm import audit, snapshots
from prm.errors import ValidationError
from prm.models import Connection
from prm.snapshot_erase import erase_patients
from workers.ehr_access import EhrAccess
from workers.runtime import WorkerContext
from workers.stream_leases import LeaseLost, StreamLease
from workers.sync_population import group_roster, population_of
from workers.sync_run import StreamRun

log = logging.getLogger(__name__)


def drop_leavers(ctx: WorkerContext, access: EhrAccess, connection: Connection, stream_id: int,
                 run: StreamRun, lease: StreamLease) -> None:
    """Erase the patients held outside the export Group's population; the caller runs the Patient stream, whose
    lease is renewed in the erasing transaction (LeaseLost, nothing erased, when another worker has it)."""
    group = connection.export_group or ""
    roster = group_roster(access, connection, run)
    connection_id = connection.id or 0
    if roster.unreadable:
        why = f"Group/{group} {roster.unreadable}" + (" (their records cannot be read either)" if roster.unresolved
                                                      else "")
        run.notes.append(f"{why}: nobody is removed, since who left cannot be told (prm sync erase removes a "
                         "whole copy)")
        log.warning("connection %s: %s; no patient removed", connection.name, why)
        return
    actor = audit.Actor("system", access.client_name, connection_id=connection_id)
    with ctx.db.session() as session:
        population = population_of(set(roster.patients), snapshots.merge_links(session, connection_id))
        leavers = snapshots.patients_named(session, connection_id) - population
        if not leavers and not snapshots.shared_bookings_outside(session, connection_id, population):
            return
    # Shared bookings naming nobody in the Group go with the leavers; with none, they are said as such.
    who = (f"{len(leavers)} patient(s) who left Group/{group}" if leavers
           else f"shared bookings naming nobody in Group/{group}")
    try:
        with ctx.db.session() as session:
            if not lease.take_in(session):
                raise LeaseLost(lease.name)
            erased = erase_patients(session, ctx.settings.clock, actor, connection_id, leavers, patients_named,
                                    keeping=population, caller_stream_id=stream_id)
    except ValidationError as busy:  # nothing erased: the next Patient run tries again
        run.notes.append(f"{who} stay until a later run: {busy}")
        log.info("connection %s: %s wait: %s", connection.name, who, busy)
        return
    run.notes.append(f"{who} removed ({erased.words()})")
    log.info("connection %s: %s removed (%s)", connection.name, who, erased.words())
