"""The sandbox EHR's FHIR server with a state directory (`ehr-sandbox up`): what a demo wrote is there at the next
start, as in a real EHR, until the data set changes; without one, each start is a throwaway database."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from ehr_sandbox.fhir_server import DEFAULT_DATASET, STATE_KEY, FhirServer
from ehr_sandbox.stack import free_port

PATIENT = "pat-000001"


@contextmanager
def running(state: Path | None) -> Iterator[FhirServer]:
    server = FhirServer(free_port(), "http://localhost:9/fhir", dataset=DEFAULT_DATASET, state_dir=state).start()
    try:
        yield server
    finally:
        server.stop()


def found(server: FhirServer, note: str) -> tuple[int, int]:
    """HTTP statuses of the demo's note and of a data-set patient."""
    note_status, patient_status = (requests.get(f"{server.internal_url}/{path}", timeout=30).status_code
                                   for path in (f"Basic/{note}", f"Patient/{PATIENT}"))
    return note_status, patient_status


def write_demo_note(server: FhirServer) -> str:
    created = requests.post(f"{server.internal_url}/Basic", timeout=30,
                            json={"resourceType": "Basic", "code": {"text": "written during a demo"}},
                            headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_a_state_directory_keeps_what_a_demo_wrote_until_the_data_set_changes(tmp_path: Path) -> None:
    state = tmp_path / "ehr-sandbox"
    with running(state) as first:
        note = write_demo_note(first)
    assert (state / "sekmet.db").exists(), "stopping keeps the state directory's database"
    with running(state) as second:
        assert found(second, note) == (200, 200), "the demo's write is still there"
    (state / STATE_KEY).write_text("another data set")  # as after an upgrade that changed it
    with running(state) as third:
        assert found(third, note) == (404, 200), "made from the new data set, not the old database"
    assert (state / STATE_KEY).read_text() != "another data set"


def test_without_a_state_directory_each_start_is_a_throwaway_database() -> None:
    with running(None) as first:
        note = write_demo_note(first)
        workdir = first.workdir
    assert workdir is not None and not workdir.exists()
    with running(None) as second:
        assert found(second, note) == (404, 200)
