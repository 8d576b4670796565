"""The sidebar page's patient and Visits cards, rendered from an overview: each notice shows when, and only
when, it applies (a merged record, a refused newer version, a stale copy), and a patient read live says so."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import render_template

from prm.config import Settings
from prm.db import Database
from prm.patient_overview import Occasion, PatientOverview
from prm.patients import PatientHeader
from smart_app import overview_present
from smart_app.app import create_app
from smart_app.context import prm

NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
HEADER = PatientHeader("pat-000276", "Jessica Green", "1970-08-20", "female")
PLAIN = PatientOverview(
    header=HEADER, merged_into=None, newer_refused=False, as_of=NOW - timedelta(minutes=3),
    last_visit=Occasion("enc-1", datetime(2026, 7, 13, 17, 55, tzinfo=ZoneInfo("America/New_York")),
                        "Hudson Skin & Aesthetics – Midtown", "finished", "Botox (anti-wrinkle injections)"),
    next_booking=None, visits_past_year=2, missed_past_year=1)


def page(database: Database, settings: Settings, overview: PatientOverview | None) -> str:
    app = create_app(settings)
    try:
        with app.test_request_context("/app/h/"):
            return render_template(
                "sidebar.html", handle="h", patient=overview.header if overview else HEADER, problem=None,
                overview=overview, freshness=overview_present.freshness(overview.as_of, NOW) if overview else None,
                when_text=overview_present.when_text, counts_text=overview_present.counts_text,
                banner=False, end_token="t", api_token="a", sees_visits=True, sees_bookings=True,
                opens_tickets=True)
    finally:
        prm(app).worker.db.dispose()


def test_a_plain_overview_shows_visits_and_no_notice(database: Database, settings: Settings) -> None:
    shown = page(database, settings, PLAIN)
    assert ('id="last-visit" class="occasion"><span class="when">Mon 13 Jul 2026, 17:55</span>'
            '<span class="what">Botox (anti-wrinkle injections)</span>'
            '<span class="where">Hudson Skin &amp; Aesthetics – Midtown</span></dd>') in shown
    assert 'id="next-booking">none booked</dd>' in shown and "2 visits · 1 missed booking" in shown
    assert "synced 3 min ago" in shown and 'class="muted" id="patient-source"' in shown
    assert "patient-merged" not in shown and "patient-refused" not in shown


def test_each_notice_shows_when_it_applies(database: Database, settings: Settings) -> None:
    troubled = dataclasses.replace(PLAIN, merged_into="pat-000999", newer_refused=True, as_of=NOW - timedelta(hours=2))
    shown = page(database, settings, troubled)
    assert 'id="patient-merged"' in shown and "Patient/pat-000999" in shown
    assert 'id="patient-refused"' in shown and "newer version of this record" in shown
    assert 'class="problem" id="patient-source"' in shown and "may be out of date: tell your IT team" in shown


def test_a_patient_read_live_says_so_and_has_no_visits_yet(database: Database, settings: Settings) -> None:
    shown = page(database, settings, None)
    assert "Read live from the EHR for this launch." in shown and 'id="last-visit"' not in shown
    assert "appear here once fhir-prm has synced this patient" in shown
