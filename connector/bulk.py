"""Bulk Data $export (FHIR Bulk Data Access 2.0) for the initial sync: kick off, wait politely, stream NDJSON.

Files are read line by line from a streamed response, never whole; a connection lost mid-file re-requests the
file and skips the lines already handed out, so the caller sees each line once. Status and file URLs must lie
under the EHR's `iss`: the bearer token goes nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import requests

from connector.errors import retry_after_seconds
from connector.fhir_reader import Authed, check_id, check_type
from connector.polite import PoliteClient
from prm.errors import PermanentEhrError, TransientEhrError

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
DEFAULT_POLL_S = 2.0  # when a status answer has no Retry-After
POLL_CAP_S = 60.0  # never sleep longer than this between polls, whatever Retry-After says
CHUNK_BYTES = 64 * 1024
INVALID = "__invalid__"


class BulkExport:
    """One EHR's $export: system level, or a Group's when `group_id` is given."""

    def __init__(self, iss: str, client: PoliteClient, token: Callable[[], str],
                 reauthenticate: Callable[[], None]) -> None:
        self._authed = Authed(iss, client, token, reauthenticate)
        self.iss = self._authed.iss
        self._client = client

    def kick_off(self, types: list[str], since: str | None = None, group_id: str | None = None) -> str:
        """Start an export; returns the status URL (Content-Location of the 202)."""
        url = f"{self.iss}/Group/{check_id(group_id)}/$export" if group_id else f"{self.iss}/$export"
        params = [("_type", ",".join(check_type(t) for t in types))] if types else []
        if since:
            params.append(("_since", since))

        def send(headers: dict[str, str]) -> requests.Response:
            return self._client.request("GET", url, headers={**headers, "Prefer": "respond-async"}, params=params)

        response = self._authed.call(send)
        response.close()
        location = response.headers.get("Content-Location")
        if response.status_code != 202 or not location:
            raise PermanentEhrError(f"$export kick-off answered HTTP {response.status_code} without a status URL")
        log.info("bulk export started (%d type(s), since=%s)", len(types), bool(since))
        return self._authed.on_ehr(location, "bulk status URL")

    def wait(self, status_url: str, max_wait_s: float = 3600,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Poll until complete, honouring Retry-After; returns the manifest. Files listed in its `error` array
        are logged and passed to `progress`, and stay in the manifest for the caller to read."""
        url = self._authed.on_ehr(status_url, "bulk status URL")
        started, slept = time.monotonic(), 0.0
        while True:
            response = self._authed.call(lambda headers: self._client.request("GET", url, headers=headers))
            if response.status_code == 200:
                return self._manifest(response, progress)
            response.close()
            if response.status_code != 202:
                raise PermanentEhrError(f"bulk status answered HTTP {response.status_code}")
            delay = min(retry_after_seconds(response.headers.get("Retry-After")) or DEFAULT_POLL_S, POLL_CAP_S)
            if progress is not None:
                progress(response.headers.get("X-Progress") or "in progress")
            if max(time.monotonic() - started, slept) + delay > max_wait_s:
                raise TransientEhrError(f"bulk export not complete after {max_wait_s:.0f} s", retry_after_s=delay)
            self._client.sleep(delay)
            slept += delay

    def _manifest(self, response: requests.Response, progress: Callable[[str], None] | None) -> dict[str, Any]:
        try:
            manifest = response.json()
        except ValueError as exc:
            raise TransientEhrError("the bulk manifest is not complete JSON") from exc
        if not isinstance(manifest, dict) or not isinstance(manifest.get("output", []), list):
            raise PermanentEhrError("the bulk manifest is not an object with an output list")
        for item in [*manifest.get("output", []), *(manifest.get("error") or [])]:
            self._authed.on_ehr(str(item.get("url", "")) if isinstance(item, dict) else "", "bulk file URL")
        errors = manifest.get("error") or []
        if errors:
            log.warning("bulk export finished with %d error file(s)", len(errors))
            if progress is not None:
                progress(f"complete with {len(errors)} error file(s)")
        return manifest

    def resources(self, file_url: str) -> Iterator[dict[str, Any]]:
        """Each line of an NDJSON file as a dict; a line that is not a JSON object comes out as
        {"resourceType": "__invalid__", "error": ..., "line": n} for the caller to quarantine."""
        for number, raw in self.lines(file_url):
            yield parse_line(raw, number)

    def lines(self, file_url: str) -> Iterator[tuple[int, bytes]]:
        """Each non-blank line of an NDJSON file, unparsed, with its line number (for a parser elsewhere)."""
        url = self._authed.on_ehr(file_url, "bulk file URL")
        handed_out = 0
        for attempt in range(1, self._client.max_attempts + 1):
            response = self._authed.call(
                lambda headers: self._client.request("GET", url, headers=headers, stream=True), accept=NDJSON)
            line_no = 0
            try:
                for raw in response.iter_lines(chunk_size=CHUNK_BYTES):
                    line_no += 1
                    if line_no <= handed_out:
                        continue
                    handed_out = line_no
                    if raw.strip():
                        yield line_no, raw
                return
            except requests.RequestException as exc:
                if attempt == self._client.max_attempts:
                    raise TransientEhrError(f"bulk file lost mid-stream {attempt} times: {type(exc).__name__}") \
                        from exc
                delay = self._client.backoff_delay(attempt)
                log.warning("bulk file cut after line %d (%s); re-reading in %.2f s", handed_out,
                            type(exc).__name__, delay)
                self._client.sleep(delay)
            finally:
                response.close()

    def delete(self, status_url: str) -> None:
        """Cancel the job or release its files; one that is already gone is fine."""
        url = self._authed.on_ehr(status_url, "bulk status URL")
        try:
            self._authed.call(lambda headers: self._client.request("DELETE", url, headers=headers)).close()
        except PermanentEhrError as exc:
            if exc.status not in (404, 410):
                raise


def parse_line(raw: bytes, line_no: int) -> dict[str, Any]:
    try:
        item = orjson.loads(raw)
    except ValueError as exc:
        return {"resourceType": INVALID, "error": f"not JSON: {str(exc)[:120]}", "line": line_no}
    if not isinstance(item, dict) or not isinstance(item.get("resourceType"), str):
        return {"resourceType": INVALID, "error": "not a FHIR resource object", "line": line_no}
    return item
