"""The clinic's time zone (prm.clinic_zones): the EHR's `timezone` extensions first, up the partOf chains, then
the connection's clinic setting; on SQLite and PostgreSQL, from the data set's directory."""

from __future__ import annotations

import copy
import json
from datetime import UTC
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fhir_mappings.directory import (
    organization_record_from_organization,
    site_from_location,
    staff_role_from_practitioner_role,
)
from fhir_mappings.encounter import visit_from_encounter
from prm import connections, snapshots
from prm.clinic_zones import for_care_ticket, zone_for
from prm.config import Settings
from prm.crypto import SecretBox
from prm.db import Database
from prm.followup_models import CareTicket
from prm.models import Connection

DATA = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"


def directory(resource_type: str) -> dict[str, dict[str, Any]]:
    with (DATA / f"{resource_type}.ndjson").open() as lines:
        return {r["id"]: r for r in map(json.loads, lines)}


def without_zone(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    bare = copy.deepcopy(resource)
    kept = [e for e in bare.pop("extension", []) if "timezone" not in e.get("url", "")]
    return {**bare, **({"extension": kept} if kept else {}), **changes}


def stored(database: Database, settings: Settings, clinics: tuple[dict[str, str], ...] = ()) -> Connection:
    """A connection with the data set's Locations and Organizations synced, some changed to lose their zone:
    loc-smh-opd-b (part of loc-smh-campus, Asia/Kolkata), loc-rdc-clapham (managed by org-riverside-dental,
    itself now without a zone and part of org-bankside-medical, Europe/London), and a partOf cycle."""
    locations, organizations = directory("Location"), directory("Organization")
    locations["loc-smh-opd-b"] = without_zone(locations["loc-smh-opd-b"])
    locations["loc-rdc-clapham"] = without_zone(locations["loc-rdc-clapham"])
    locations["loc-hsa-brooklyn"]["extension"] = [{"url": "http://hl7.org/fhir/StructureDefinition/timezone",
                                                   "valueCode": "Mars/Olympus_Mons"}]
    locations["loc-hsa-brooklyn"]["managingOrganization"] = {"reference": "Organization/org-cycle-a"}
    organizations["org-riverside-dental"] = without_zone(
        organizations["org-riverside-dental"], partOf={"reference": "Organization/org-bankside-medical"})
    organizations["org-bankside-medical"]["extension"] = [
        {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "Europe/Dublin"}]
    base = without_zone(organizations["org-hudson-skin"])
    organizations["org-cycle-a"] = {**base, "id": "org-cycle-a", "partOf": {"reference": "Organization/org-cycle-b"}}
    organizations["org-cycle-b"] = {**base, "id": "org-cycle-b", "partOf": {"reference": "Organization/org-cycle-a"}}
    with database.session() as session:
        row = connections.upsert(session, settings.clock, SecretBox(settings.encryption_keys),
                                 connections.ConnectionSpec(name="c", iss="https://c.example/fhir", client_id="c",
                                                            clinics=clinics))
        snapshots.upsert_page(session, row.id or 0, "Location", [site_from_location(r) for r in locations.values()])
        snapshots.upsert_page(session, row.id or 0, "Organization",
                              [organization_record_from_organization(r) for r in organizations.values()])
        session.expunge(row)
        return row


def test_a_location_s_own_zone_then_the_locations_it_is_part_of(database: Database, settings: Settings) -> None:
    connection = stored(database, settings)
    with database.session() as session:
        assert zone_for(session, connection, location_ids=["loc-hsa-midtown"]) == ZoneInfo("America/New_York")
        assert zone_for(session, connection, location_ids=["loc-smh-opd-b"]) == ZoneInfo("Asia/Kolkata")


def test_then_the_managing_organization_and_what_it_is_part_of(database: Database, settings: Settings) -> None:
    """Clapham declares no zone, nor does Riverside Dental; Riverside is part of an Organization that does."""
    connection = stored(database, settings)
    with database.session() as session:
        assert zone_for(session, connection, location_ids=["loc-rdc-clapham"]) == ZoneInfo("Europe/Dublin")
        assert zone_for(session, connection, organization_ids=["org-riverside-dental"]) == ZoneInfo("Europe/Dublin")
        assert zone_for(session, connection, location_ids=["loc-unknown"],
                        organization_ids=["org-sanjeevani-opd"]) == ZoneInfo("Asia/Kolkata")


def test_the_clinic_setting_is_the_fallback_and_a_bad_zone_is_passed_over(database: Database,
                                                                          settings: Settings) -> None:
    """Brooklyn's extension names no IANA zone and its Organization's partOf chain is a cycle with no zone: the
    connection's clinic setting for that Organization answers; without one, the zone all clinics share."""
    clinic = ({"organization": "Organization/org-cycle-b", "name": "Cycle", "timezone": "America/Chicago"},)
    connection = stored(database, settings, clinic)
    with database.session() as session:
        assert zone_for(session, connection, location_ids=["loc-hsa-brooklyn"]) == ZoneInfo("America/Chicago")
        assert zone_for(session, connection, organization_ids=["org-nowhere"]) == ZoneInfo("America/Chicago")


def test_utc_when_nothing_names_a_zone_or_the_clinics_disagree(database: Database, settings: Settings) -> None:
    clinics = ({"organization": "Organization/x", "name": "X", "timezone": "Europe/London"},
               {"organization": "Organization/y", "name": "Y", "timezone": "Asia/Kolkata"})
    connection = stored(database, settings, clinics)
    with database.session() as session:
        assert zone_for(session, connection, location_ids=["loc-hsa-brooklyn"]) is UTC
        assert zone_for(session, connection) is UTC


def test_a_care_ticket_is_dated_where_its_visit_was_else_where_its_owner_works(database: Database,
                                                                               settings: Settings) -> None:
    """The Pune visit's Location; a teleconsultation (no Location) by its service provider; a PractitionerRole
    owner by where the role works; an Organization owner; nothing known: the connection's one clinic."""
    clinic = ({"organization": "Organization/org-hudson-skin", "name": "Hudson", "timezone": "America/New_York"},)
    connection = stored(database, settings, clinic)
    with (DATA / "Encounter.ndjson").open() as lines:
        visits = [visit_from_encounter(e) for e in map(json.loads, lines)
                  if e["id"] in ("enc-000010-016", "enc-000055-001")]
    roles = [staff_role_from_practitioner_role(r) for r in directory("PractitionerRole").values()]
    with database.session() as session:
        snapshots.upsert_page(session, connection.id or 0, "Encounter", visits)
        snapshots.upsert_page(session, connection.id or 0, "PractitionerRole", roles)

    def ticket(**fields: Any) -> CareTicket:
        return CareTicket(connection_id=connection.id or 0, patient_id="pat-000010", reason="callback-request",
                          description="Call back", **fields)

    with database.session() as session:
        assert for_care_ticket(session, ticket(encounter_id="enc-000010-016")) == ZoneInfo("Asia/Kolkata")
        assert for_care_ticket(session, ticket(encounter_id="enc-000055-001")) == ZoneInfo("Asia/Kolkata")
        assert for_care_ticket(session, ticket(owner="PractitionerRole/prole-rdc-02")) == ZoneInfo("Europe/London")
        assert for_care_ticket(session, ticket(owner="Organization/org-sanjeevani-opd")) == ZoneInfo("Asia/Kolkata")
        assert for_care_ticket(session, ticket(encounter_id="enc-gone", owner="Patient/pat-000010")) == \
            ZoneInfo("America/New_York")


def test_a_role_that_declares_its_zone_dates_the_tickets_it_owns_before_where_it_works(
        database: Database, settings: Settings) -> None:
    """A PractitionerRole's own `timezone` extension (issue 5) is the EHR's word on that role: a ticket it owns,
    with no visit to date it by, reads its dates there, not where the role's Location is; a zone that is no IANA
    zone is passed over for where the role works."""
    connection = stored(database, settings)
    role = directory("PractitionerRole")["prole-rdc-02"]  # works at a Europe/London Location
    declared = {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "Europe/Lisbon"}
    rows = [staff_role_from_practitioner_role({**role, "extension": [declared]}),
            staff_role_from_practitioner_role({**role, "id": "prole-bad-zone",
                                               "extension": [{**declared, "valueCode": "Europe/Atlantis"}]})]
    assert rows[0].timezone == "Europe/Lisbon"
    with database.session() as session:
        snapshots.upsert_page(session, connection.id or 0, "PractitionerRole", rows)
    with database.session() as session:
        owned = {owner: for_care_ticket(session, CareTicket(
            connection_id=connection.id or 0, patient_id="pat-000010", reason="callback-request",
            description="Call back", owner=f"PractitionerRole/{owner}", encounter_id="enc-not-synced"))
            for owner in ("prole-rdc-02", "prole-bad-zone")}
    assert owned == {"prole-rdc-02": ZoneInfo("Europe/Lisbon"), "prole-bad-zone": ZoneInfo("Europe/London")}
