"""The rest-hook endpoint: only the EHR holding a subscription's current secret is heard; a handshake makes the
subscription active, an event wakes the streams of its focus types (or its topic's), and bad input says why."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from prm import connections, ehr_subscriptions, streams
from prm.audit import command_line_actor
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.models import Job
from prm.snapshot_models import EhrSubscription, SyncStream
from smart_app.app import create_app
from smart_app.context import prm
from tests.support.dispatch import RecordingDispatcher
from tests.unit.fhir_mappings.test_subscriptions import TOPIC, notification
from workers.sync import SYNC_STREAM


@pytest.fixture
def app(database: Database, settings: Settings) -> Iterator[Flask]:
    flask_app = create_app(settings)
    context = prm(flask_app)
    context.worker = dataclasses.replace(context.worker, dispatcher=RecordingDispatcher())
    yield flask_app
    context.worker.db.dispose()


@pytest.fixture
def subscribed(database: Database, settings: Settings) -> tuple[str, str, int]:
    """A connection with its streams and one subscription to an Encounter and Appointment topic:
    (hook key, secret, connection id)."""
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c"))
        streams.ensure(session, row.id or 0)
        sub, secret = ehr_subscriptions.request(session, settings.clock, row.id or 0, TOPIC,
                                                ["Encounter", "Appointment"])
        return sub.hook_key, secret, row.id or 0


def post(client: FlaskClient, key: str, secret: str | None, body: Any) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    response = client.post(f"/fhir/hooks/{key}", json=body, headers=headers)
    return response.status_code, response.get_json()


def subscription(database: Database) -> EhrSubscription:
    with database.session() as session:
        row = session.exec(select(EhrSubscription)).one()
        session.expunge(row)
        return row


def woken(database: Database) -> dict[str, bool]:
    with database.session() as session:
        return {s.resource_type: s.woken_at is not None for s in session.exec(select(SyncStream))
                if s.resource_type in ("Encounter", "Appointment", "Patient")}


def test_a_handshake_activates_and_an_event_wakes_the_streams_of_its_focus(
        app: Flask, database: Database, subscribed: tuple[str, str, int], settings: Settings) -> None:
    key, secret, _ = subscribed
    client = app.test_client()
    assert post(client, key, secret, notification("handshake"))[0] == 200
    row = subscription(database)
    assert (row.status, row.notifications, row.last_heard_at) == ("active", 0, settings.clock())

    status, body = post(client, key, secret, notification("event-notification", (1, "Encounter/e1"), since=1))
    assert status == 200 and body["resourceType"] == "OperationOutcome"
    assert woken(database) == {"Encounter": True, "Appointment": False, "Patient": False}
    with database.session() as session:
        encounters = session.exec(select(SyncStream).where(SyncStream.resource_type == "Encounter")).one()
        job = session.exec(select(Job).where(Job.kind == SYNC_STREAM, Job.subject_id == encounters.id)).one()
    assert job.status == "pending" and job.due_at == settings.clock()
    assert prm(app).worker.dispatcher.sent == [("prm.run_job", (job.id,))]  # type: ignore[attr-defined]

    post(client, key, secret, notification("event-notification", (2, None), since=2))  # no focus: the topic's types
    assert woken(database) == {"Encounter": True, "Appointment": True, "Patient": False}
    row = subscription(database)
    assert (row.notifications, row.events_seen) == (2, 2)


def test_a_wrong_old_or_missing_secret_and_an_unknown_key_are_refused_and_change_nothing(
        app: Flask, database: Database, subscribed: tuple[str, str, int], settings: Settings) -> None:
    key, secret, connection_id = subscribed
    client = app.test_client()
    event = notification("event-notification", (1, "Encounter/e1"), since=1)
    assert post(client, key, "guess", event)[0] == 401
    assert post(client, key, None, event)[0] == 401
    assert post(client, "no-such-key", secret, event)[0] == 404
    with database.session() as session:  # re-activation gives a new secret: the old one stops working
        _, new_secret = ehr_subscriptions.request(session, settings.clock, connection_id, TOPIC, ["Encounter"])
    assert post(client, key, secret, event)[0] == 401
    assert woken(database) == {"Encounter": False, "Appointment": False, "Patient": False}
    assert subscription(database).status == "requested"
    assert post(client, key, new_secret, notification("handshake"))[0] == 200
    with database.session() as session:
        ehr_subscriptions.set_state(session, settings.clock, session.exec(select(EhrSubscription)).one(), "off")
    assert post(client, key, new_secret, event)[0] == 404  # switched off: as if it never was


def test_a_body_that_is_not_a_notification_is_refused_with_the_reason(
        app: Flask, database: Database, subscribed: tuple[str, str, int]) -> None:
    key, secret, _ = subscribed
    client = app.test_client()
    status, body = post(client, key, secret, {"resourceType": "Bundle", "type": "searchset"})
    assert status == 400 and "history Bundle" in body["issue"][0]["diagnostics"]
    response = client.post(f"/fhir/hooks/{key}", data=b"{not json", headers={"Authorization": f"Bearer {secret}"})
    assert response.status_code == 400
    assert subscription(database).last_heard_at is None
    with database.session() as session:
        assert session.exec(select(Job).where(Job.kind == SYNC_STREAM)).all() == []


def test_a_disabled_connection_hears_its_ehr_but_wakes_nothing(
        app: Flask, database: Database, subscribed: tuple[str, str, int], settings: Settings) -> None:
    key, secret, _ = subscribed
    with database.session() as session:
        connections.set_enabled(session, settings.clock, command_line_actor(None), "c", False)
    status, _ = post(app.test_client(), key, secret, notification("event-notification", (1, "Encounter/e1"), since=1))
    assert status == 200 and subscription(database).notifications == 1
    assert woken(database) == {"Encounter": False, "Appointment": False, "Patient": False}
    assert prm(app).worker.dispatcher.sent == []  # type: ignore[attr-defined]


def test_a_heartbeat_counting_events_we_never_got_wakes_the_topics_streams(
        app: Flask, database: Database, subscribed: tuple[str, str, int]) -> None:
    key, secret, _ = subscribed
    client = app.test_client()
    post(client, key, secret, notification("event-notification", (1, "Encounter/e1"), since=1))
    with database.session() as session:  # that event's run is over
        for stream in session.exec(select(SyncStream)):
            stream.woken_at = None
            session.add(stream)
    assert post(client, key, secret, notification("heartbeat", since=1))[0] == 200  # nothing missed
    assert woken(database) == {"Encounter": False, "Appointment": False, "Patient": False}
    assert post(client, key, secret, notification("heartbeat", since=3))[0] == 200  # events 2 and 3 were lost
    assert woken(database) == {"Encounter": True, "Appointment": True, "Patient": False}
    assert subscription(database).events_seen == 3
