"""EhrClient: FHIR REST reads against one EHR with one bearer token; errors mapped to PrmError."""

from __future__ import annotations

from typing import Any

import requests

from connector.json_get import get_json
from prm.errors import PermanentEhrError, ValidationError
from prm.fhir_names import is_id, is_type

FHIR_JSON = "application/fhir+json"


class EhrClient:
    """Talks FHIR R4 REST to one `iss`; knows HTTP and FHIR, nothing of the PRM."""

    def __init__(self, iss: str, access_token: str | None, session: requests.Session, timeout: float) -> None:
        self.base = iss.rstrip("/")
        self._session = session
        self._timeout = timeout
        self._headers = {"Accept": FHIR_JSON}
        if access_token:
            self._headers["Authorization"] = f"Bearer {access_token}"

    def _get(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return get_json(self._session, url, self._headers, self._timeout, params)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET [base]/Type/id, checking both parts so no caller can smuggle a path or query in."""
        if not is_type(resource_type) or not is_id(resource_id):
            raise ValidationError(f"not a FHIR reference: {resource_type}/{resource_id}")
        body = self._get(f"{self.base}/{resource_type}/{resource_id}")
        if body.get("resourceType") != resource_type:
            raise PermanentEhrError(f"asked for {resource_type}, got {body.get('resourceType')}")
        return body

    def capability_statement(self) -> dict[str, Any]:
        body = self._get(f"{self.base}/metadata")
        if body.get("resourceType") != "CapabilityStatement":
            raise PermanentEhrError("metadata is not a CapabilityStatement")
        return body
