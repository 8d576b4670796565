"""Whether the EHR offers a synced type to our backend client, as its last check found, and what a refusal of a
type it does not offer does: the stream pauses itself, with why (prm.streams.pause_refused).

Why: EHRs differ in what they hold. One without guardians has no RelatedPerson; one keeps its directory
elsewhere. Such a stream failed every run, so the connection showed as failing, its alerts fired, and IT had
to pause it by hand. A pause needs both the check's finding and the EHR's refusal: a type the
CapabilityStatement leaves out but the EHR serves anyway is synced (statements are often incomplete), and a
refusal of a type the check found offered stays an error for IT. Only the types sync can do without pause so:
patients, visits, bookings and our own Tasks and Communications are errors the check already reports.
"""

from __future__ import annotations

from connector.backend import BackendAuthError
from prm.errors import PermanentEhrError
from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.sync_run import StreamRun

OPTIONAL_TYPES = ("RelatedPerson", "Organization", "Location", "PractitionerRole")  # sync goes on without them
REFUSALS = (403, 404, 405)  # "not for you", "no such type here", "not that interaction"


def not_offered(connection: Connection, resource_type: str) -> str | None:
    """Why the last check found that the EHR does not offer this optional type to our backend client, or None
    (offered, unknown, or a type sync cannot do without)."""
    if resource_type not in OPTIONAL_TYPES:
        return None
    entry = ((connection.capability_profile or {}).get("resources") or {}).get(resource_type) or {}
    if entry.get("listed") is False:
        return f"its CapabilityStatement lists no {resource_type}"
    lacking = [name for name in ("read", "search") if entry.get(name) is False]
    if lacking:
        return f"its CapabilityStatement lists no {' or '.join(lacking)} for {resource_type}"
    granted = entry.get("granted")
    if isinstance(granted, str) and "s" not in granted:
        return f"our backend client was not granted {resource_type} search"
    return None


def offered(connection: Connection, resource_type: str) -> bool:
    """The last check saw the EHR offer this type to our client: listed with read and search, search granted.
    Only this resumes a stream the sync paused; a check that could not tell (the EHR down, no token) does not."""
    entry = ((connection.capability_profile or {}).get("resources") or {}).get(resource_type) or {}
    granted = entry.get("granted")
    return (entry.get("listed") is True and entry.get("read") is True and entry.get("search") is True
            and isinstance(granted, str) and "s" in granted)


def refused(exc: BaseException) -> bool:
    """The EHR said no to the request itself, not to what it held: no retry changes that. The token endpoint's
    refusal is about our client, not the type."""
    return isinstance(exc, PermanentEhrError) and not isinstance(exc, BackendAuthError) and (
        exc.status in REFUSALS or (exc.status == 400 and "not-supported" in exc.codes))


def pause_note(connection: Connection, stream: SyncStream, run: StreamRun, exc: BaseException) -> str | None:
    """The note a stream pauses with when this failure is the EHR refusing a type it does not offer, else None.
    Only a stream the EHR has never served: none of its runs succeeded and this one stored no page (a refused
    paging link or one patient's refusal, mid-way through a type the EHR serves, is an error for IT)."""
    if stream.last_success_at is not None or run.pages or not refused(exc):
        return None
    why = not_offered(connection, stream.resource_type)
    if why is None:
        return None
    status = exc.status if isinstance(exc, PermanentEhrError) else None
    return (f"the EHR refused {stream.resource_type} (HTTP {status}) and {why}; a check of the connection "
            "that finds it offered resumes it")
