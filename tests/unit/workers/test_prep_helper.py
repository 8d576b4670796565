"""The page helper process prepares bulk pages exactly as the worker would itself, in order, and a helper that
dies is reported, not waited for."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path

import pytest

from fhir_mappings import r4_schema
from prm.errors import TransientEhrError
from workers.prep_helper import PIPE_BYTES, Helper, Inline, Lines, preparer

SANDBOX = Path(__file__).resolve().parents[3] / "ehr_sandbox" / "data" / "sandbox"


def numbered(resource_type: str, count: int) -> Lines:
    raw = (SANDBOX / f"{resource_type}.ndjson").read_bytes().splitlines()[:count]
    return [(n, line) for n, line in enumerate(raw, start=1)]


def pages() -> list[tuple[str, Lines]]:
    encounters = numbered("Encounter", 30)
    bad = json.loads(encounters[1][1])
    bad["period"] = "yesterday"
    encounters[1] = (2, json.dumps(bad).encode())
    encounters[2] = (3, b'{"resourceType": "Encounter", "id": "cut')
    return [("Patient", numbered("Patient", 40)), ("Encounter", encounters),
            ("Appointment", numbered("Appointment", 5))]


def test_the_helper_prepares_pages_as_the_worker_would_in_order() -> None:
    with Helper(("Patient", "Encounter")) as helper, Inline() as inline:  # Appointment compiled on its first page
        for resource_type, lines in pages():
            helper.submit(resource_type, lines)
            inline.submit(resource_type, lines)
        for resource_type, lines in pages():
            remote, local = helper.result(), inline.result()
            assert remote == local
            assert len(remote.rows) + len(remote.bad) == len(lines)
            if resource_type == "Encounter":
                errors = [error for _, error in remote.bad]
                assert len(errors) == 2 and "period" in errors[0] and "__invalid__" in errors[1]


def test_a_helper_that_dies_is_reported() -> None:
    with Helper() as helper:
        helper._process.kill()
        helper._process.wait()
        helper.submit("Patient", numbered("Patient", 3))
        with pytest.raises(TransientEhrError, match="page helper exited"):
            helper.result()


def test_ready_says_whether_a_result_is_in_without_waiting_for_one() -> None:
    """The worker asks before it would wait: if the helper is behind, it prepares the page in hand itself."""
    with Helper(("Patient",)) as helper:
        assert not helper.ready()  # nothing submitted: result() would wait
        helper.submit("Patient", numbered("Patient", 5))
        deadline = time.monotonic() + 30
        while not helper.ready() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert helper.ready()
        assert len(helper.result().rows) == 5
        assert not helper.ready()
    assert Inline().ready()  # preparing in this process never waits for another


def test_this_process_compiles_its_checks_only_when_warmed_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiling holds the GIL: a worker that compiled as it kicked off an export polled its status late. So the
    worker's own compile waits for `warm()` (called between status polls), and runs once however often asked."""
    compiled: list[list[str]] = []
    monkeypatch.setattr(r4_schema, "prepare", lambda types: compiled.append(list(types)))
    with preparer(False, ("Patient",)) as inline, preparer(True, ("Encounter",)) as helper:
        assert compiled == []
        for prep in (inline, helper, inline, helper):
            prep.warm()
        for prep in (inline, helper):
            thread = prep._warmup.thread  # type: ignore[attr-defined]
            assert thread is not None
            thread.join(timeout=30)
    assert sorted(compiled) == [["Encounter"], ["Patient"]]


def test_the_pipes_to_the_helper_hold_a_whole_page() -> None:
    """A page reaches the helper in one write: in 64 KiB pieces each waited for the GIL (see `widen`). fhir-prm
    runs on Linux (Debian 12), where pipes can be widened."""
    with Helper(("Patient",)) as helper:
        for pipe in (helper._stdin, helper._stdout):
            assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) >= PIPE_BYTES
        big = numbered("Encounter", 500)
        assert sum(len(line) for _, line in big) > 64 * 1024
        helper.submit("Encounter", big)
        assert len(helper.result().rows) == len(big)
