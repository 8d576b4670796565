"""Which first load each stream gets: IT's override, else the capability profile; a Group-level export only with
a named Group, and only for the types a Group export holds."""

from __future__ import annotations

import pytest

from prm.models import Connection
from prm.snapshot_models import SyncStream
from workers.sync_strategy import group_population, kept_to_group, strategy_of


def connection(initial: str, export_group: str | None = None, incremental: str = "patient-by-patient") -> Connection:
    return Connection(name="ehr", iss="https://ehr.example/fhir", client_id="c", export_group=export_group,
                      capability_profile={"sync": {"strategy": {"initial": initial, "incremental": incremental}}})


def stream(resource_type: str, strategy: str = "auto") -> SyncStream:
    return SyncStream(connection_id=1, resource_type=resource_type, strategy=strategy)


@pytest.mark.parametrize(("resource_type", "initial"), [
    ("Patient", "bulk-export-group"), ("RelatedPerson", "bulk-export-group"), ("Encounter", "bulk-export-group"),
    ("Appointment", "bulk-export-group"),
    ("Organization", "search"), ("Location", "search"), ("PractitionerRole", "search"),  # not in a Group export
    ("Task", "search"), ("Communication", "search"),  # ours: found by our identifier system
])
def test_a_group_export_holds_the_patients_compartments(resource_type: str, initial: str) -> None:
    assert strategy_of(stream(resource_type), connection("bulk-export-group", "dental")) == (
        initial, "patient-by-patient")


def test_without_a_named_group_the_first_load_searches() -> None:
    assert strategy_of(stream("Encounter"), connection("bulk-export-group"))[0] == "search"


def test_it_can_ask_for_an_export_or_for_searches() -> None:
    assert strategy_of(stream("Encounter", "bulk"), connection("search", "dental"))[0] == "bulk-export-group"
    assert strategy_of(stream("Encounter", "bulk"), connection("search"))[0] == "bulk-export-system"
    assert strategy_of(stream("Encounter", "search"), connection("bulk-export-system")) == (
        "search", "search-last-updated")


def test_it_can_ask_for_patient_by_patient_keeping_an_offered_export() -> None:
    searched = connection("search", incremental="search-last-updated")
    assert strategy_of(stream("Encounter", "patient"), searched) == ("patient-by-patient", "patient-by-patient")
    exported = connection("bulk-export-system", incremental="search-last-updated")
    assert strategy_of(stream("Encounter", "patient"), exported) == ("bulk-export-system", "patient-by-patient")


def test_it_can_ask_for_every_resource_each_pass_keeping_an_offered_export() -> None:
    """For an EHR whose searches ignore `_lastUpdated` though its CapabilityStatement lists it."""
    searched = connection("search", incremental="search-last-updated")
    assert strategy_of(stream("Encounter", "reread"), searched) == ("search", "full-reread")
    exported = connection("bulk-export-system", incremental="search-last-updated")
    assert strategy_of(stream("Encounter", "reread"), exported) == ("bulk-export-system", "full-reread")
    scoped = connection("patient-by-patient")
    assert strategy_of(stream("Patient", "reread"), scoped) == ("search", "full-reread")


def test_streams_of_one_connection_can_need_different_exports() -> None:
    """A stream IT set to `bulk` exports the Group, one left on a system-export profile the system: why a shared
    export takes as companions only the streams whose first load is the same export."""
    profile = connection("bulk-export-system", "dental")
    assert strategy_of(stream("Encounter", "bulk"), profile)[0] == "bulk-export-group"
    assert strategy_of(stream("Patient"), profile)[0] == "bulk-export-system"


def test_with_a_named_group_type_level_reads_are_kept_to_the_groups_patients() -> None:
    """Whatever loaded the stream and however IT asked it to read (searches throughout, every resource each
    pass): not for the directory or our own resources, and not where it is read patient by patient anyway (that
    reads the population only)."""
    grouped = connection("bulk-export-group", "dental", incremental="search-last-updated")
    assert [t for t in ("Patient", "RelatedPerson", "Encounter", "Appointment", "Location", "Task")
            if kept_to_group(stream(t), grouped)] == ["Patient", "RelatedPerson", "Encounter", "Appointment"]
    assert kept_to_group(stream("Encounter", "reread"), grouped)
    assert kept_to_group(stream("Encounter", "search"), grouped)
    assert not kept_to_group(stream("Encounter"), connection("bulk-export-group", "dental"))  # patient by patient
    assert kept_to_group(stream("Encounter"), connection("bulk-export-system", "dental", "search-last-updated"))


def test_a_type_the_ehr_does_not_offer_leaves_the_export_yet_stays_kept_to_the_group() -> None:
    """Out of the export's `_type` (a strict EHR refuses a whole export for one type it does not hold), so its
    first load searches, or goes patient by patient; what it stores is still only the Group's patients'."""
    unlisted = {"resources": {"RelatedPerson": {"listed": False}}}
    for initial, incremental, first in [("bulk-export-group", "search-last-updated", "search"),
                                        ("bulk-export-group", "patient-by-patient", "patient-by-patient"),
                                        ("bulk-export-system", "search-last-updated", "search")]:
        grouped = connection(initial, "dental" if initial.endswith("group") else None, incremental)
        grouped.capability_profile = {**grouped.capability_profile, **unlisted}
        assert strategy_of(stream("RelatedPerson"), grouped) == (first, incremental)
        assert strategy_of(stream("Encounter"), grouped) == (initial, incremental), "the others are exported"
        named = grouped.export_group is not None  # the system-export case names no Group here
        assert group_population(stream("RelatedPerson"), grouped) is named
        assert kept_to_group(stream("RelatedPerson"), grouped) is (named and incremental != "patient-by-patient")


def test_a_named_group_is_the_population_whatever_the_ehr_offers_to_read_it() -> None:
    """No Group-level export (a system one, or none): the Group still says whose records are kept."""
    for initial, incremental in [("bulk-export-system", "search-last-updated"), ("search", "search-last-updated"),
                                 ("bulk-export-system", "patient-by-patient")]:
        named = connection(initial, "dental", incremental)
        for resource_type in ("Patient", "RelatedPerson", "Encounter", "Appointment"):
            assert group_population(stream(resource_type), named)
            assert kept_to_group(stream(resource_type), named) is (incremental != "patient-by-patient")
        assert not group_population(stream("Location"), named), "the directory is read whole"
        assert not group_population(stream("Encounter"), connection(initial, None, incremental)), "no Group named"
