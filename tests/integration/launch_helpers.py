"""Walk a SMART EHR launch over real HTTP as a browser would: the shell's chart, the iframe, the redirects."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Protocol

import requests


class Ehr(Protocol):
    """Anything with an EHR shell chart (the SandboxStack, or an extra EHR front with a profile)."""

    def chart_url(self, patient_id: str, user: str | None = None) -> str: ...

_IFRAME_SRC = re.compile(r'<iframe[^>]*id="prm-sidebar"[^>]*src="([^"]+)"')


def sidebar_launch_url(sandbox: Ehr, patient_id: str, user: str | None = None) -> str:
    """Open the patient's chart in the EHR shell and return the URL its sidebar iframe loads."""
    page = requests.get(sandbox.chart_url(patient_id, user), timeout=10)
    page.raise_for_status()
    match = _IFRAME_SRC.search(page.text)
    assert match, "the EHR chart has a sidebar iframe"
    return html.unescape(match.group(1))


@dataclass
class LaunchResult:
    response: requests.Response
    urls: list[str]

    @property
    def handle(self) -> str:
        match = re.search(r"/app/([^/]+)/", self.response.url)
        assert match, f"not a sidebar URL: {self.response.url}"
        return match.group(1)


def launch(sandbox: Ehr, patient_id: str, user: str | None = None) -> LaunchResult:
    """Follow the whole launch with no cookie jar shared between sites (as a cross-site iframe would)."""
    url = sidebar_launch_url(sandbox, patient_id, user)
    urls = [url]
    session = requests.Session()
    response = session.get(url, allow_redirects=True, timeout=20)
    urls += [r.url for r in response.history[1:]] + [response.url]
    return LaunchResult(response, urls)


def stop_before_callback(sandbox: Ehr, patient_id: str) -> str:
    """Walk the launch up to the EHR's redirect back to us and return that callback URL unvisited."""
    url = sidebar_launch_url(sandbox, patient_id)
    to_ehr = requests.get(url, allow_redirects=False, timeout=20)
    assert to_ehr.status_code == 302, to_ehr.text[:300]
    back = requests.get(to_ehr.headers["Location"], allow_redirects=False, timeout=20)
    assert back.status_code in (302, 303), back.text[:300]
    return back.headers["Location"]


def api_token(page: str) -> str:
    """The CSRF token the sidebar page hands its scripts for the JSON API."""
    match = re.search(r'data-token="([^"]+)"', page)
    assert match, "the sidebar hands its scripts an API token"
    return match.group(1)
