"""The sandbox EHR's FHIR server with a state directory (`ehr-sandbox up`): what a demo wrote is there at the next
start, as in a real EHR, until the data set changes; without one, each start is a throwaway database."""
from __future__ import annotations

from pathlib import Path

import requests

from ehr_sandbox.fhir_server import DEFAULT_DATASET, STATE_KEY, FhirServer
from ehr_sandbox.stack import free_port

PATIENT = "pat-000001"


def started(state: Path | None) -> FhirServer:
    return FhirServer(free_port(), "http://localhost:9/fhir", dataset=DEFAULT_DATASET, state_dir=state).start()


def status(server: FhirServer, path: str) -> int:
    return requests.get(f"{server.internal_url}/{path}", timeout=30).status_code


def write_demo_note(server: FhirServer) -> str:
    created = requests.post(f"{server.internal_url}/Basic", timeout=30,
                            json={"resourceType": "Basic", "code": {"text": "written during a demo"}},
                            headers={"Content-Type": "application/fhir+json"})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_a_state_directory_keeps_what_a_demo_wrote_until_the_data_set_changes(tmp_path: Path) -> None:
    state = tmp_path / "ehr-sandbox"
    first = started(state)
    try:
        note = write_demo_note(first)
    finally:
        first.stop()
    assert (state / "sekmet.db").exists(), "stopping keeps the state directory's database"

    second = started(state)
    try:
        assert status(second, f"Basic/{note}") == 200, "the demo's write is still there"
        assert status(second, f"Patient/{PATIENT}") == 200
    finally:
        second.stop()

    (state / STATE_KEY).write_text("another data set")  # as after an upgrade that changed it
    third = started(state)
    try:
        assert status(third, f"Basic/{note}") == 404, "made from the new data set, not the old database"
        assert status(third, f"Patient/{PATIENT}") == 200
    finally:
        third.stop()
    assert (state / STATE_KEY).read_text() != "another data set"


def test_without_a_state_directory_each_start_is_a_throwaway_database() -> None:
    first = started(None)
    try:
        note = write_demo_note(first)
        workdir = first.workdir
    finally:
        first.stop()
    assert workdir is not None and not workdir.exists()
    second = started(None)
    try:
        assert status(second, f"Basic/{note}") == 404
        assert status(second, f"Patient/{PATIENT}") == 200
    finally:
        second.stop()
