"""HTTP status -> the PrmError the caller can act on, with the EHR's OperationOutcome as the message."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import requests

from prm.errors import AuthExpiredError, EhrError, PermanentEhrError, TransientEhrError

MAX_RETRY_AFTER_S = 300.0


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), capped; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), MAX_RETRY_AFTER_S)


def outcome_codes(response: requests.Response) -> tuple[str, ...]:
    """The issue codes of an OperationOutcome body (`not-supported`, `forbidden`, ...); () when there is none."""
    try:
        body = response.json()
    except ValueError:
        return ()
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ()
    return tuple(str(i["code"]) for i in body.get("issue") or [] if isinstance(i, dict) and i.get("code"))


def outcome_text(response: requests.Response) -> str:
    """The diagnostics of an OperationOutcome body, else the start of the body; never whole payloads."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = [
            issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", "")
            for issue in body.get("issue", [])
        ]
        return "; ".join(p for p in parts if p)[:500]
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('error')}: {body.get('error_description', '')}".strip(": ")[:500]
    return ""


def raise_for_status(response: requests.Response) -> requests.Response:
    """Return the response if 2xx/3xx, else raise the matching EhrError."""
    status = response.status_code
    if status < 400:
        return response
    what = f"{response.request.method} {response.url.split('?')[0]} -> HTTP {status}"
    detail = outcome_text(response)
    message = f"{what}: {detail}" if detail else what
    if status == 401:
        raise AuthExpiredError(message, ehr_said=detail)
    if status in (408, 425, 429) or status >= 500:
        raise TransientEhrError(message, retry_after_seconds(response.headers.get("Retry-After")), ehr_said=detail)
    raise PermanentEhrError(message, status, outcome_codes(response), ehr_said=detail)


def transport_error(exc: requests.RequestException, url: str) -> EhrError:
    """A connection failure or timeout, described without the query string (which may carry ids)."""
    kind = "timed out" if isinstance(exc, requests.Timeout) else "unreachable"
    return TransientEhrError(f"{url.split('?')[0]} {kind}: {type(exc).__name__}")
