"""GET a JSON object from the EHR, every failure as the EhrError its caller acts on (not a requests error)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests

from connector.errors import raise_for_status, transport_error
from prm.errors import PermanentEhrError


def get_json(session: requests.Session, url: str, headers: Mapping[str, str], timeout: float,
             params: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The body of a 2xx answer; unreachable or timed out -> TransientEhrError, an error status -> its EhrError,
    a body that is not a JSON object -> PermanentEhrError. Messages name the URL without its query."""
    try:
        response = session.get(url, params=params, headers=dict(headers), timeout=timeout)
    except requests.RequestException as exc:
        raise transport_error(exc, url) from exc
    raise_for_status(response)
    try:
        body = response.json()
    except ValueError as exc:
        raise PermanentEhrError(f"{url.split('?')[0]} answered with a body that is not JSON") from exc
    if not isinstance(body, dict):
        raise PermanentEhrError(f"{url.split('?')[0]} answered with JSON that is not an object")
    return body
