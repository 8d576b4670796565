"""connector.json_get: each way a JSON GET can fail becomes the EhrError its caller acts on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from werkzeug.wrappers import Request, Response

from connector.json_get import get_json
from prm.errors import AuthExpiredError, PermanentEhrError, TransientEhrError
from tests.support.ports import free_port
from tests.support.wsgi_server import serving

ANSWERS = {
    "/ok": ('{"resourceType": "CapabilityStatement"}', 200),
    "/html": ("<html>sign in</html>", 200),
    "/list": ("[1, 2]", 200),
    "/busy": ('{"resourceType": "OperationOutcome"}', 503),
    "/expired": ("", 401),
}


@pytest.fixture
def ehr() -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    asked: list[tuple[str, str, str]] = []

    @Request.application
    def app(request: Request) -> Response:
        asked.append((request.path, request.query_string.decode(), request.headers.get("Accept", "")))
        body, status = ANSWERS[request.path]
        return Response(body, status=status, content_type="application/json")

    with serving(app) as base:
        yield base, asked


def test_a_json_object_comes_back_with_the_headers_and_params_sent(
        ehr: tuple[str, list[tuple[str, str, str]]]) -> None:
    base, asked = ehr
    with requests.Session() as http:
        body = get_json(http, f"{base}/ok", {"Accept": "application/fhir+json"}, 5, {"_count": "1"})
    assert body == {"resourceType": "CapabilityStatement"}
    assert asked == [("/ok", "_count=1", "application/fhir+json")]


@pytest.mark.parametrize(("path", "error", "words"), [
    ("/html", PermanentEhrError, "/html answered with a body that is not JSON"),
    ("/list", PermanentEhrError, "/list answered with JSON that is not an object"),
    ("/busy", TransientEhrError, "HTTP 503"),
    ("/expired", AuthExpiredError, "HTTP 401"),
])
def test_each_failure_is_an_ehr_error_naming_the_url_without_its_query(
        ehr: tuple[str, list[tuple[str, str, str]]], path: str, error: type[Exception], words: str) -> None:
    base, _ = ehr
    with requests.Session() as http, pytest.raises(error) as raised:
        get_json(http, f"{base}{path}?patient=pat-000001", {}, 5)
    assert words in str(raised.value) and "pat-000001" not in str(raised.value)


def test_an_unreachable_ehr_is_transient() -> None:
    with requests.Session() as http, pytest.raises(TransientEhrError, match="unreachable"):
        get_json(http, f"http://127.0.0.1:{free_port()}/metadata?patient=pat-000001", {}, 2)
