"""Discovery cached per iss: threads that miss together share one request to the EHR."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import requests
from werkzeug.wrappers import Request, Response

from connector.discovery import DiscoveryCache
from tests.support.wsgi_server import serving

WELL_KNOWN = ('{"authorization_endpoint": "http://ehr.test/auth", "token_endpoint": "http://ehr.test/token", '
              '"capabilities": ["launch-ehr"]}')


@pytest.fixture
def slow_ehr() -> Iterator[tuple[str, list[str]]]:
    """An EHR whose smart-configuration takes 0.3 s to answer; it records each request's path."""
    asked: list[str] = []

    @Request.application
    def app(request: Request) -> Response:
        asked.append(request.path)
        time.sleep(0.3)
        return Response(WELL_KNOWN, content_type="application/json")

    with serving(app) as base:
        yield base, asked


def test_threads_missing_the_same_iss_together_share_one_request(slow_ehr: tuple[str, list[str]]) -> None:
    base, asked = slow_ehr
    cache = DiscoveryCache()
    found: list[str] = []

    def discover(iss: str) -> None:
        with requests.Session() as session:
            found.append(cache.get(session, iss, timeout=5).token_endpoint)

    threads = [threading.Thread(target=discover, args=(f"{base}/fhir",)) for _ in range(5)]
    threads.append(threading.Thread(target=discover, args=(f"{base}/other",)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert found == ["http://ehr.test/token"] * 6
    assert sorted(asked) == ["/fhir/.well-known/smart-configuration", "/other/.well-known/smart-configuration"]


def test_an_expired_entry_is_fetched_again(slow_ehr: tuple[str, list[str]]) -> None:
    base, asked = slow_ehr
    cache = DiscoveryCache(ttl_s=0)
    with requests.Session() as session:
        cache.get(session, f"{base}/fhir", timeout=5)
        cache.get(session, f"{base}/fhir", timeout=5)
    assert len(asked) == 2
