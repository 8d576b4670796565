"""A shared Bulk export's place: its status URL kept on every stream it loads, from the kick-off until it is
stored, so a run that failed or was killed while the EHR wrote the files, or while they were read, goes on
with that export rather than starting another.

Why: an export costs the EHR minutes of work, and many EHRs allow one export per client at a time. A second
kick-off after a crash would be refused until the first expired (hours), or would double the EHR's work.
Pages an interrupted run stored are stored again: upserts are version-aware, so that changes nothing.
A kept export that no longer answers as it should (forgotten, failed, its files gone) is replaced once by a
fresh one; an export of other types or another Group (the streams that joined this time differ) is not used.
Either way the kept one is cancelled first (DELETE on its status URL), so it neither blocks the new one nor
holds the EHR's files.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from prm import streams
from prm.errors import AuthExpiredError, EhrError, loggable
from prm.snapshot_models import SyncStream
from workers.ehr_access import EhrAccess
from workers.runtime import WorkerContext

log = logging.getLogger(__name__)
EXPORT_KIND = streams.EXPORT_UNDER_WAY  # the kind of pass a stream keeps the place of


def export_manifest(ctx: WorkerContext, access: EhrAccess, members: Sequence[SyncStream], group: str | None,
                    progress: Callable[[str], None]) -> tuple[str, dict[str, Any]]:
    """The status URL and manifest of the export these streams load: the one they kept, waited for again, or a
    new one, kicked off and kept on each of them. `progress` is called while the EHR works (lease renewals)."""
    types = sorted(member.resource_type for member in members)
    kept = _kept(members, types, group)
    if kept is not None:
        try:
            return kept, access.bulk.wait(kept, progress=progress)
        except AuthExpiredError:
            raise
        except EhrError as exc:
            log.info("the kept bulk export no longer answers (%s): starting a new one", type(exc).__name__)
    for stale in _statuses(members):
        _cancel(access, stale)
    status_url = access.bulk.kick_off(types, group_id=group)
    _keep(ctx, members, json.dumps({"status": status_url, "types": types, "group": group}))
    return status_url, access.bulk.wait(status_url, progress=progress)


def _kept(members: Sequence[SyncStream], types: list[str], group: str | None) -> str | None:
    """The status URL every one of these streams kept, for an export of exactly these types and Group."""
    places = {streams.pass_place(member, EXPORT_KIND)[0] for member in members}
    if len(places) != 1 or None in places:
        return None
    place = _parsed(places.pop())
    if place is None or place.get("types") != types or place.get("group") != group:
        return None
    status = place.get("status")
    return status if isinstance(status, str) else None


def _statuses(members: Sequence[SyncStream]) -> list[str]:
    """Every export status URL these streams kept (one, or several where different runs cut off differ)."""
    places = [_parsed(streams.pass_place(member, EXPORT_KIND)[0]) for member in members]
    return sorted({p["status"] for p in places if p is not None and isinstance(p.get("status"), str)})


def _parsed(place: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(place or "")
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _cancel(access: EhrAccess, status_url: str) -> None:
    """Cancel a kept export we will not use. Best effort: if the EHR will not, its new kick-off says so."""
    try:
        access.bulk.delete(status_url)
    except AuthExpiredError:
        raise
    except EhrError as exc:
        log.warning("could not cancel a kept bulk export (%s); starting the new one regardless", loggable(exc))


def _keep(ctx: WorkerContext, members: Sequence[SyncStream], place: str) -> None:
    with ctx.db.session() as session:
        for member in members:
            fresh = streams.get(session, member.id or 0)
            streams.keep_place(fresh, EXPORT_KIND, place, None)
            session.add(fresh)
