"""Which strategy each stream syncs by, and whether what it stores is kept to a Group's patients: plain rules
over a stream and its connection, shared by the engine and by the page store (so neither imports the other).
"""

from __future__ import annotations

from fhir_mappings.written import WRITTEN_TYPES
from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.stream_offers import not_offered

# Types in the Patient compartment (FHIR R4 CompartmentDefinition): what a Group-level export holds.
GROUP_EXPORTED = ("Patient", "RelatedPerson", "Encounter", "Appointment")


def strategy_of(stream: SyncStream, connection: Connection) -> tuple[str, str]:
    """(initial, incremental) strategy: IT's override, else what `prm connection check` found. A type the check
    found not offered (workers.stream_offers) is left out of a Bulk export's `_type`, which a strict EHR refuses
    whole for one type it does not hold: its first load searches (or goes patient by patient), so a refusal is
    its own. It stays kept to an export Group's patients all the same (`group_population`)."""
    initial, incremental = _planned(stream, connection)
    if initial.startswith("bulk-export") and not_offered(connection, stream.resource_type):
        initial = "patient-by-patient" if incremental == "patient-by-patient" else "search"
    return initial, incremental


def _planned(stream: SyncStream, connection: Connection) -> tuple[str, str]:
    found = (connection.capability_profile.get("sync") or {}).get("strategy") or {}
    initial = found.get("initial", "search")
    incremental = found.get("incremental", "search-last-updated")
    if stream.strategy == "search":
        initial, incremental = "search", "search-last-updated"
    elif stream.strategy == "bulk":
        initial = "bulk-export-group" if connection.export_group else "bulk-export-system"
    elif stream.strategy == "patient":
        incremental = "patient-by-patient"
        initial = initial if initial.startswith("bulk-export") else "patient-by-patient"
    elif stream.strategy == "reread":
        incremental = "full-reread"
        initial = initial if initial.startswith("bulk-export") else "search"
    if stream.resource_type in WRITTEN_TYPES:
        initial = "search"  # ours are found by our identifier system, not exported wholesale
    if initial == "bulk-export-group" and (not connection.export_group or stream.resource_type not in GROUP_EXPORTED):
        initial = "search"  # no Group named, or a directory type: those are outside the patients' compartments
    return initial, incremental


def kept_to_group(stream: SyncStream, connection: Connection) -> bool:
    """The stream's population is the export Group's (`group_population`) and it reads type-wide (searches or
    re-reads): what those bring is stored only for the Group's population (workers.sync_population).

    Why: type-level searches return every patient, visit and booking of the EHR that changed, other clinics' too.
    Read patient by patient instead, a Group of thousands would cost thousands of requests a pass."""
    return group_population(stream, connection) and _planned(stream, connection)[1] != "patient-by-patient"


def group_population(stream: SyncStream, connection: Connection) -> bool:
    """The stream's population is the export Group's members (and the records merged with them): IT names the
    Group so that the PRM holds that clinic's patients and nobody else's, however the EHR lets them be read (a
    Group-level export; a system-level one, kept to the members as it is stored; searches, kept to the patients
    held, with a new member's whole record read once). One who leaves the Group leaves the snapshot
    (workers.sync_leavers). The directory types (Organization, Location, PractitionerRole) are read whole."""
    return bool(connection.export_group) and stream.resource_type in GROUP_EXPORTED
