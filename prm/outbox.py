"""The outbox: intended writes to an EHR, committed in the same transaction as the domain change.

One row per (connection, resource type, business identifier): the EHR's copy of one PRM item. A later edit
of the item re-arms the row (`revision` + 1) rather than adding another, so the EHR holds one resource per
item however often it changes. Claiming is one conditional UPDATE per batch, so a row is never in flight
in two drains at once; a drain that dies lets its claim lapse and another takes the row over, knowing the
first may have written it (`outcome_unknown`: search by identifier before writing again).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, func, or_, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from prm import jobs
from prm.clock import Clock
from prm.db import insert_ignore
from prm.errors import NotFoundError, ValidationError
from prm.models import OutboxRow

# Our business identifier system on every resource fhir-prm writes (the basis of exactly-once).
IDENTIFIER_SYSTEM = "https://fhir-prm.org/fhir/sid/business-key"
OPEN_STATUSES = ("pending", "in_flight")
SETTLED_STATUSES = ("done", "kept", "dead", "discarded")


def add(session: Session, clock: Clock, *, connection_id: int, resource_type: str, identifier_value: str,
        source: str, identifier_system: str = IDENTIFIER_SYSTEM) -> OutboxRow:
    """Record one intended write, or re-arm the existing row for the same item (its revision goes up)."""
    if not resource_type.isalpha() or not resource_type[:1].isupper():
        raise ValidationError(f"not a FHIR resource type: {resource_type!r}")
    if not identifier_system or not identifier_value:
        raise ValidationError("an outbox row needs a business identifier (system and value)")
    now = clock()
    inserted = insert_ignore(
        session,
        OutboxRow.__table__,  # type: ignore[attr-defined]
        {"connection_id": connection_id, "resource_type": resource_type,
         "identifier_system": identifier_system, "identifier_value": identifier_value, "source": source,
         "status": "pending", "attempts": 0, "due_at": now, "created_at": now, "updated_at": now,
         "revision": 1, "sent_revision": 0, "outcome_unknown": False, "duplicates": []},
        ["connection_id", "resource_type", "identifier_system", "identifier_value"],
    )
    row = session.exec(
        select(OutboxRow).where(
            OutboxRow.connection_id == connection_id, OutboxRow.resource_type == resource_type,
            OutboxRow.identifier_system == identifier_system, OutboxRow.identifier_value == identifier_value,
        ).with_for_update()
    ).one()
    if not inserted:
        rearm(row, now)
    return row


def queue(session: Session, clock: Clock, *, connection_id: int, resource_type: str, identifier_value: str,
          source: str) -> OutboxRow:
    """`add` the write and make the connection's drain due, in the caller's commit: what every producer does."""
    row = add(session, clock, connection_id=connection_id, resource_type=resource_type,
              identifier_value=identifier_value, source=source)
    jobs.wake(session, jobs.WRITEBACK_DRAIN, connection_id, clock())
    return row


def rearm(row: OutboxRow, now: datetime) -> None:
    """The item changed: write it again. A row the EHR refuses everywhere (`kept`) or IT discarded stays so."""
    row.revision += 1
    row.updated_at = now
    if row.status in ("done", "dead"):
        row.status, row.attempts, row.due_at, row.last_error = "pending", 0, now, None


def claim(session: Session, clock: Clock, *, connection_id: int, holder: str, limit: int,
          lease_s: float) -> tuple[str, list[OutboxRow]]:
    """Take up to `limit` due rows of one connection for this drain; returns (claim token, rows).

    Due means pending and due, or in flight under a claim that lapsed (its drain died: outcome unknown).
    """
    now = clock()
    table = OutboxRow.__table__  # type: ignore[attr-defined]
    claimable = or_(
        and_(table.c.status == "pending", table.c.due_at <= now),
        and_(table.c.status == "in_flight", table.c.claim_until < now),
    )
    lapsed = and_(table.c.status == "in_flight", table.c.claim_until < now)
    token = f"{holder}#{uuid.uuid4().hex[:12]}"
    for _ in range(3):  # a racing drain may take the rows we saw; look again rather than stop while rows are due
        ids = _claimable_ids(session, connection_id, now, limit)
        if not ids:
            return "", []
        session.execute(update(table).where(lapsed, table.c.id.in_(ids)).values(outcome_unknown=True))
        session.execute(
            update(table).where(table.c.id.in_(ids), claimable)  # re-checked: a racing drain took none of these
            .values(status="in_flight", claimed_by=token, claim_until=now + timedelta(seconds=lease_s),
                    updated_at=now))
        rows = list(session.exec(select(OutboxRow).where(OutboxRow.claimed_by == token,
                                                         OutboxRow.status == "in_flight").order_by(col(OutboxRow.id))))
        if rows:
            return token, rows
    return token, []


def _claimable_ids(session: Session, connection_id: int, now: datetime, limit: int) -> list[int]:
    """Due pending rows, then in-flight rows whose claim lapsed: two queries on `ix_outbox_due`, since one
    OR-ed query reads every row the connection ever had (settled rows are kept) on SQLite.
    SKIP LOCKED (PostgreSQL) passes over rows another drain is claiming right now; SQLite serialises writers."""
    pending = select(OutboxRow.id).where(
        col(OutboxRow.status) == "pending", col(OutboxRow.due_at) <= now, OutboxRow.connection_id == connection_id,
    ).order_by(col(OutboxRow.due_at), col(OutboxRow.id)).limit(limit).with_for_update(skip_locked=True)
    ids = [i for i in session.exec(pending) if i is not None]
    if len(ids) < limit:
        lapsed = select(OutboxRow.id).where(
            col(OutboxRow.status) == "in_flight", col(OutboxRow.claim_until) < now,
            OutboxRow.connection_id == connection_id,
        ).order_by(col(OutboxRow.claim_until), col(OutboxRow.id)).limit(limit - len(ids)).with_for_update(
            skip_locked=True)
        ids += [i for i in session.exec(lapsed) if i is not None]
    return ids


def hold_all(session: Session, row_ids: list[int], token: str) -> dict[int, OutboxRow]:
    """The rows, locked, whose claim by this drain still stands, by id: one statement for a batch."""
    if not row_ids:
        return {}
    rows = session.exec(select(OutboxRow).where(col(OutboxRow.id).in_(row_ids), OutboxRow.claimed_by == token,
                                                OutboxRow.status == "in_flight").with_for_update())
    return {row.id or 0: row for row in rows}


def held(session: Session, row_id: int, token: str) -> OutboxRow | None:
    """The row, locked, if this drain's claim on it still stands (else another drain owns it now)."""
    row = session.exec(select(OutboxRow).where(OutboxRow.id == row_id).with_for_update()).one_or_none()
    if row is None or row.claimed_by != token or row.status != "in_flight":
        return None
    return row


@dataclass(frozen=True)
class Written:
    """One write the EHR took: which row, as what, at which revision of the item."""

    row: OutboxRow
    fhir_id: str
    version_id: str | None
    written_type: str
    revision: int

    def settled(self, now: datetime) -> dict[str, object]:
        """The row's columns once settled: `done`, or pending again if the item moved on while it was written."""
        sent = max(self.row.sent_revision, self.revision)
        return {"fhir_id": self.fhir_id, "version_id": self.version_id, "written_type": self.written_type,
                "sent_revision": sent, "status": "done" if sent >= self.row.revision else "pending",
                "outcome_unknown": False, "last_error": None, "claimed_by": None, "claim_until": None,
                "attempts": 0, "updated_at": now, "due_at": now}


def settle_written(row: OutboxRow, now: datetime, *, fhir_id: str, version_id: str | None, written_type: str,
                   revision: int) -> None:
    """The EHR holds `revision` of the item as written_type/fhir_id (one row, on the ORM object)."""
    for column, value in Written(row, fhir_id, version_id, written_type, revision).settled(now).items():
        setattr(row, column, value)


def settle_written_many(session: Session, now: datetime, written: list[Written]) -> None:
    """`settle_written` for a whole batch as one UPDATE executed for many rows (the drain's common path)."""
    if not written:
        return
    table = OutboxRow.__table__  # type: ignore[attr-defined]
    rows = [{"b_id": w.row.id, **{f"b_{column}": value for column, value in w.settled(now).items()}}
            for w in written]
    columns = [key[2:] for key in rows[0] if key != "b_id"]
    session.execute(update(table).where(table.c.id == bindparam("b_id"))
                    .values({column: bindparam(f"b_{column}") for column in columns}), rows)


def settle_kept(row: OutboxRow, now: datetime, reason: str) -> None:
    """Every type we may write is refused: the item stays in fhir-prm only, shown to IT with the reason."""
    row.status, row.degraded_reason, row.written_type = "kept", reason[:500], None
    row.claimed_by, row.claim_until, row.updated_at = None, None, now


def settle_failed(row: OutboxRow, now: datetime, error: str, *, retry_in_s: float, max_attempts: int,
                  outcome_unknown: bool) -> None:
    """A failed attempt: due again after `retry_in_s`, or dead (for IT to retry or discard) after max_attempts."""
    row.attempts += 1
    row.last_error = error[:2000]
    row.outcome_unknown = row.outcome_unknown or outcome_unknown
    row.claimed_by, row.claim_until, row.updated_at = None, None, now
    if row.attempts >= max_attempts:
        row.status = "dead"
    else:
        row.status, row.due_at = "pending", now + timedelta(seconds=retry_in_s)


def retry(session: Session, clock: Clock, row_id: int) -> OutboxRow:
    """IT asks for a dead (or kept) row to be tried again from scratch."""
    row = _get(session, row_id)
    if row.status not in ("dead", "kept"):
        raise ValidationError(f"outbox row {row_id} is {row.status}: only dead or kept rows can be retried")
    now = clock()
    if row.status == "kept":  # try the preferred type again: the EHR may accept it now
        row.degraded_reason, row.written_type = None, None
    row.status, row.attempts, row.due_at, row.updated_at = "pending", 0, now, now
    session.add(row)
    return row


def discard(session: Session, clock: Clock, row_id: int) -> OutboxRow:
    """IT gives up on a dead or kept row; it is kept (never deleted) with the reason it had."""
    row = _get(session, row_id)
    if row.status not in ("dead", "kept"):
        raise ValidationError(f"outbox row {row_id} is {row.status}: only dead or kept rows can be discarded")
    row.status, row.updated_at = "discarded", clock()
    session.add(row)
    return row


def needing_attention(session: Session, limit: int = 200, connection_id: int | None = None,
                      status: str | None = None) -> list[OutboxRow]:
    """What IT should look at: dead rows, rows kept in fhir-prm, rows written as a fallback, duplicates found."""
    query = (select(OutboxRow)
             .where(or_(col(OutboxRow.status).in_(("dead", "kept")), col(OutboxRow.degraded_reason).is_not(None),
                        func.json_array_length(col(OutboxRow.duplicates)) > 0))
             .where(col(OutboxRow.status) != "discarded"))
    return _newest(session, query, limit, connection_id, status)


def listed(session: Session, limit: int = 500, connection_id: int | None = None,
           status: str | None = None) -> list[OutboxRow]:
    """The newest rows, of one connection and one status where named (filtered before the limit, so a busy
    connection's rows never hide a quiet one's)."""
    return _newest(session, select(OutboxRow), limit, connection_id, status)


def _newest(session: Session, query: SelectOfScalar[OutboxRow], limit: int, connection_id: int | None,
            status: str | None) -> list[OutboxRow]:
    if status is not None and status not in (*OPEN_STATUSES, *SETTLED_STATUSES):
        raise ValidationError(f"status must be one of {', '.join((*OPEN_STATUSES, *SETTLED_STATUSES))}, "
                              f"got {status!r}")
    if connection_id is not None:
        query = query.where(col(OutboxRow.connection_id) == connection_id)
    if status is not None:
        query = query.where(col(OutboxRow.status) == status)
    return list(session.exec(query.order_by(col(OutboxRow.updated_at).desc(), col(OutboxRow.id).desc()).limit(limit)))


def counts_by_connection(session: Session) -> list[tuple[int, str, int]]:
    """(connection id, status, rows) for every status a connection's rows are in: the write-back overview."""
    query = (select(OutboxRow.connection_id, OutboxRow.status, func.count())
             .group_by(col(OutboxRow.connection_id), col(OutboxRow.status)))
    return [(int(c), str(s), int(n)) for c, s, n in session.exec(query)]


def next_due(session: Session, connection_id: int) -> datetime | None:
    """When the connection's drain should run next: the earliest pending row, or the earliest claim to lapse
    (a drain that died mid-write leaves its rows in flight until then)."""
    pending = session.exec(select(func.min(OutboxRow.due_at)).where(
        OutboxRow.connection_id == connection_id, col(OutboxRow.status) == "pending")).one()
    lapsing = session.exec(select(func.min(OutboxRow.claim_until)).where(
        OutboxRow.connection_id == connection_id, col(OutboxRow.status) == "in_flight")).one()
    times = [t for t in (pending, lapsing) if t is not None]
    return min(times) if times else None


def connections_with_due_rows(session: Session, now: datetime) -> list[int]:
    query = select(OutboxRow.connection_id).where(or_(
        and_(col(OutboxRow.status) == "pending", col(OutboxRow.due_at) <= now),
        and_(col(OutboxRow.status) == "in_flight", col(OutboxRow.claim_until) < now),
    )).distinct()
    return list(session.exec(query))


def _get(session: Session, row_id: int) -> OutboxRow:
    row = session.get(OutboxRow, row_id)
    if row is None:
        raise NotFoundError(f"no outbox row {row_id}")
    return row
