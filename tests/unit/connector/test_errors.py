"""HTTP answers become errors the caller can act on; Retry-After is read in both forms and capped."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests

from connector.errors import MAX_RETRY_AFTER_S, raise_for_status, retry_after_seconds
from prm.errors import AuthExpiredError, PermanentEhrError, TransientEhrError


def response(status: int, body: object = None, headers: dict[str, str] | None = None) -> requests.Response:
    resp = requests.Response()
    resp.status_code = status
    resp._content = json.dumps(body).encode() if body is not None else b""
    resp.headers.update(headers or {})
    resp.url = "https://ehr.example/fhir/Patient/pat-1?_elements=name"
    resp.request = requests.Request("GET", resp.url).prepare()
    return resp


def test_retry_after_forms() -> None:
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Fri, 20 Nov 2026 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("99999") == MAX_RETRY_AFTER_S
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [(401, AuthExpiredError), (429, TransientEhrError), (503, TransientEhrError), (500, TransientEhrError),
     (403, PermanentEhrError), (404, PermanentEhrError), (412, PermanentEhrError)],
)
def test_status_mapping(status: int, kind: type[Exception]) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x",
                                                               "diagnostics": "scope missing"}]}
    with pytest.raises(kind) as caught:
        raise_for_status(response(status, outcome, {"Retry-After": "3"}))
    assert "scope missing" in str(caught.value)
    assert "_elements" not in str(caught.value)  # no query strings (they can carry ids) in messages
    if isinstance(caught.value, TransientEhrError) and status == 429:
        assert caught.value.retry_after_s == 3.0


def test_success_passes_through() -> None:
    ok = response(200, {"resourceType": "Patient"})
    assert raise_for_status(ok) is ok
