"""Named expiring leases in the database: one holder at a time across processes and machines.

Acquire and renew are single conditional statements, so they are atomic on SQLite and PostgreSQL
alike without table locks. A holder that dies simply stops renewing and its lease lapses.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session

from prm.db import insert_ignore
from prm.models import Lease


def acquire(session: Session, name: str, holder: str, now: datetime, ttl_s: float) -> bool:
    """Take or renew the lease `name` for `holder`; True when `holder` holds it afterwards."""
    until = now + timedelta(seconds=ttl_s)
    table = Lease.__table__  # type: ignore[attr-defined]
    result = session.execute(
        update(table)
        .where(table.c.name == name, or_(table.c.holder == holder, table.c.expires_at < now))
        .values(holder=holder, expires_at=until)
    )
    if result.rowcount:  # type: ignore[attr-defined]
        return True
    # No row yet: insert it unless someone else just did (then they hold it and it has not lapsed).
    return insert_ignore(session, table, {"name": name, "holder": holder, "expires_at": until}, ["name"])


def release(session: Session, name: str, holder: str) -> None:
    table = Lease.__table__  # type: ignore[attr-defined]
    session.execute(table.delete().where(table.c.name == name, table.c.holder == holder))
