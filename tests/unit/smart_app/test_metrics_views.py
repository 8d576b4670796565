"""GET /metrics: off until IT sets a token; only a scrape with that bearer token reads it; and what it says of
connections, streams, EHR subscriptions and the outbox is what the database holds (Prometheus' own parser reads
it back)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from prm import connections, ehr_subscriptions, jobs, outbox, streams
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from smart_app.app import create_app
from smart_app.context import prm
from tests.support.settings import METRICS_TOKEN as TOKEN

TOPIC = "http://example.org/SubscriptionTopic/encounter-start"


def app_with(settings: Settings, token: str | None) -> Flask:
    return create_app(dataclasses.replace(settings, metrics_token=token))


@pytest.fixture
def app(database: Database, settings: Settings) -> Iterator[Flask]:
    flask_app = app_with(settings, TOKEN)
    yield flask_app
    prm(flask_app).worker.db.dispose()


def scrape(app: Flask) -> tuple[int, str]:
    response = app.test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    return response.status_code, response.get_data(as_text=True)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_off_until_a_token_is_set(database: Database, settings: Settings) -> None:
    flask_app = app_with(settings, None)
    status, body = scrape(flask_app)
    prm(flask_app).worker.db.dispose()
    assert status == 404 and "PRM_METRICS_TOKEN" in body


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", TOKEN])
def test_a_scrape_without_the_token_is_refused(app: Flask, authorization: str | None) -> None:
    response = app.test_client().get("/metrics", headers={"Authorization": authorization} if authorization else {})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "prm_" not in response.get_data(as_text=True)


def test_it_reports_what_the_database_holds(app: Flask, database: Database, settings: Settings) -> None:
    now = settings.clock()
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="north", iss="https://north.example/fhir",
                                                            client_id="prm"))
        connection_id = row.id or 0
        by_type = {s.resource_type: s for s in streams.ensure(session, connection_id)}
        encounter = by_type["Encounter"]
        encounter.phase, encounter.pages, encounter.resources_synced = "incremental", 3, 250
        streams.record_success(encounter, lambda: now - timedelta(seconds=90), caught_up=True)
        streams.record_error(by_type["Location"], settings.clock, "HTTP 503 from the EHR")
        by_type["Location"].quarantined = 2
        for fhir_id in ("loc-1", "loc-2"):
            streams.quarantine(session, settings.clock, connection_id, "Location",
                               {"resourceType": "Location", "id": fhir_id}, "name: not a string")
        streams.resolve_quarantined(session, settings.clock, connection_id, "Location", ["loc-1"])
        paused = by_type["Appointment"]  # failed, then IT paused it: it neither lags nor fails any more
        streams.record_success(paused, lambda: now - timedelta(days=3), caught_up=True)
        streams.record_error(paused, settings.clock, "HTTP 403 from the EHR")
        paused.enabled = False
        session.add_all([encounter, by_type["Location"], paused])
        subscription, _ = ehr_subscriptions.request(session, settings.clock, connection_id, TOPIC, ["Encounter"])
        subscription.status, subscription.notifications, subscription.last_heard_at = "active", 7, now
        session.add(subscription)
        jobs.plan(session, "sync.stream", encounter.id or 0, now - timedelta(minutes=15))  # no worker took it
        for value in ("ticket-1", "ticket-2"):
            outbox.add(session, settings.clock, connection_id=connection_id, resource_type="Task",
                       identifier_value=value, source=f"care_ticket:{value}")
        session.commit()

    status, body = scrape(app)
    assert status == 200
    got = samples(body)

    def stream(name: str, resource_type: str) -> float:
        return got[(name, (("connection", "north"), ("type", resource_type)))]

    assert got[("prm_connection_enabled", (("connection", "north"),))] == 1
    assert got[("prm_connection_check_ok", (("connection", "north"),))] == 0, "never checked is not ok"
    assert stream("prm_sync_stream_lag_seconds", "Encounter") == 90
    caught_up = (now - timedelta(seconds=90)).timestamp()
    assert stream("prm_sync_stream_caught_up_timestamp_seconds", "Encounter") == caught_up
    assert stream("prm_sync_stream_initial", "Encounter") == 0 and stream("prm_sync_stream_initial", "Patient") == 1
    assert stream("prm_sync_stream_written_resources_total", "Encounter") == 250
    assert stream("prm_sync_stream_pages_total", "Encounter") == 3
    assert stream("prm_sync_stream_failing", "Location") == 1 and stream("prm_sync_stream_failing", "Encounter") == 0
    assert stream("prm_sync_stream_quarantined_open", "Location") == 1
    assert stream("prm_sync_stream_quarantined_resources_total", "Location") == 2
    assert stream("prm_sync_stream_held_resources", "Encounter") == 0
    assert stream("prm_sync_stream_interval_seconds", "Encounter") == 300, "the default: every 5 minutes"
    assert ("prm_sync_stream_lag_seconds", (("connection", "north"), ("type", "Patient"))) not in got, \
        "a stream that never caught up has no lag to report, not a lag of zero"
    assert stream("prm_sync_stream_enabled", "Appointment") == 0
    assert stream("prm_sync_stream_failing", "Appointment") == 0, "paused: nothing runs to fail"
    assert ("prm_sync_stream_lag_seconds", (("connection", "north"), ("type", "Appointment"))) not in got
    sub = (("connection", "north"), ("topic", TOPIC))
    assert got[("prm_ehr_subscription_active", sub)] == 1
    assert got[("prm_ehr_subscription_notifications_total", sub)] == 7
    assert got[("prm_outbox_rows", (("connection", "north"), ("status", "pending")))] == 2
    assert got[("prm_jobs_waiting", (("kind", "sync.stream"),))] == 1
    assert got[("prm_jobs_waiting_oldest_seconds", (("kind", "sync.stream"),))] == 900
    assert {name for name, _ in got if name.startswith("prm_sync_stream_enabled")} == {"prm_sync_stream_enabled"}
    assert len([key for key in got if key[0] == "prm_sync_stream_enabled"]) == len(streams.SYNC_TYPES)


def test_the_bearer_scheme_is_case_insensitive(app: Flask) -> None:
    response = app.test_client().get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert response.status_code == 200 and "# TYPE prm_jobs_waiting gauge" in response.get_data(as_text=True)


def test_openmetrics_where_the_scraper_asks_for_it(app: Flask) -> None:
    response = app.test_client().get("/metrics", headers={
        "Authorization": f"Bearer {TOKEN}",
        "Accept": "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.get_data(as_text=True).endswith("# EOF\n")
