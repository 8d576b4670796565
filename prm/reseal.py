"""Re-seal every stored secret with the newest encryption key, so an old key can be dropped safely.

Every `*_enc` column of every table is covered (a new table with secrets needs no change here). Each
value is replaced only if it is still the one read (compare-and-set), so a token refreshed meanwhile by
the running app is never overwritten with a stale one.
"""

from __future__ import annotations

from sqlalchemy import Table, select, update
from sqlmodel import Session, SQLModel

from prm import models  # noqa: F401 - registers the tables on SQLModel.metadata
from prm.crypto import SecretBox

BATCH = 500


def _sealed_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name.endswith("_enc")]


def reseal_all(session: Session, box: SecretBox) -> dict[str, int]:
    """Re-encrypt every secret with the first key of `box`; returns the count per table.column."""
    counts: dict[str, int] = {}
    for table in SQLModel.metadata.sorted_tables:
        names = _sealed_columns(table)
        if not names:
            continue
        key = table.primary_key.columns.values()[0]
        for name in names:
            column = table.c[name]
            done, last = 0, None
            while True:
                query = select(key, column).where(column.is_not(None)).order_by(key).limit(BATCH)
                if last is not None:
                    query = query.where(key > last)
                rows = session.execute(query).all()
                if not rows:
                    break
                for row_id, sealed in rows:
                    fresh = box.rotate(sealed)
                    result = session.execute(update(table).where(key == row_id, column == sealed)
                                             .values({name: fresh}))
                    done += result.rowcount or 0  # type: ignore[attr-defined]
                last = rows[-1][0]
            counts[f"{table.name}.{name}"] = done
    return counts
