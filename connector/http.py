"""One configured requests session per use: timeouts always, and urllib3's retries for safe reads."""

from __future__ import annotations

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

USER_AGENT = "fhir-prm/0.1 (+https://github.com/fhir-prm)"


def make_session(read_retries: int = 2) -> requests.Session:
    """A session whose idempotent requests retry briefly on connection errors and 502/503/504."""
    retry = Retry(
        total=read_retries, connect=read_retries, read=read_retries, backoff_factor=0.3,
        status_forcelist=(502, 503, 504), allowed_methods=frozenset({"GET", "HEAD"}),
        respect_retry_after_header=True, raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session
