"""Words for the sidebar's overview of a patient: a visit or booking as staff say it, and how fresh it is."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from prm.patient_overview import Occasion
from smart_app.admin_present import lag

STALE_AFTER = timedelta(hours=1)  # 12 missed runs at the default 5 minutes: staff should know


@dataclass(frozen=True)
class Freshness:
    text: str
    stale: bool


def when_text(occasion: Occasion) -> str:
    """`Thu 12 Nov 2026, 10:30` in the clinic's time (`Thu 12 Nov 2026` where the EHR gave a date alone), with
    the status when it is not the usual one (a visit finished, a booking booked): `(noshow)`. The sidebar puts
    what it was for and where on lines of their own beneath (`Occasion.what`, `Occasion.place`): one long line
    wrapped in a narrow sidebar read badly."""
    text = occasion.at.strftime("%a %d %b %Y" if occasion.day_only else "%a %d %b %Y, %H:%M")
    if occasion.status not in ("finished", "booked"):
        text += f" ({occasion.status})"
    return text


def freshness(as_of: datetime | None, now: datetime) -> Freshness:
    if as_of is None:
        return Freshness("From fhir-prm's copy of the EHR; its first sync is still under way.", stale=True)
    behind = lag(as_of, now)
    stale = now - as_of > STALE_AFTER
    text = f"From fhir-prm's copy of the EHR, synced {behind} ago."
    return Freshness(text + (" It may be out of date: tell your IT team." if stale else ""), stale)


def counts_text(visits: int, missed: int) -> str:
    return f"{visits} visit{'s' if visits != 1 else ''} · {missed} missed booking{'s' if missed != 1 else ''}"
