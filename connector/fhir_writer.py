"""FhirWriter: the FHIR R4 writes the write-back drain needs (conditional create, versioned update, batch and
transaction Bundles, identifier lookups), through a PoliteClient.

Writes are sent once: PoliteClient retries only idempotent methods, and the drain decides when a write is
worth sending again (it holds the business identifier that makes a resend harmless). Failures come back as
errors the drain can act on: PreconditionFailed (re-read and merge), MultipleMatches (our identifier is not
unique on the EHR), WriteRefused (this EHR will not take this kind of write: fall back to another type).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote_plus, urlencode, urlsplit

import requests

from connector.fhir_reader import FHIR_JSON, Authed, FhirReader, check_id, check_type
from connector.polite import PoliteClient
from prm.errors import EhrError, PermanentEhrError, TransientEhrError, ValidationError
from prm.fhir_names import is_id, is_type, version_of

log = logging.getLogger(__name__)

MAX_URL = 1800  # many EHRs, proxies and load balancers refuse request lines much past 2 KB
SEARCH_PAGE = "1000"
REFUSING_CODES = frozenset({"not-supported", "forbidden"})
_UNSAFE_HEADER = re.compile(r"[\x00-\x1f\x7f]")


class PreconditionFailed(PermanentEhrError):
    """412 (or 409 on a versioned update): the resource moved on since we read it; re-read, merge, resend."""


class MultipleMatches(PreconditionFailed):
    """A conditional create's criteria matched more than one resource: our identifier is not unique there."""


class WriteRefused(PermanentEhrError):
    """The EHR refuses this kind of write (403, 405, unknown type, OperationOutcome not-supported/forbidden)."""


@dataclass(frozen=True)
class WriteOutcome:
    """One write's answer. For failures (bundle entries) `detail` and `code` carry the OperationOutcome."""

    status: int
    resource_type: str
    id: str | None
    version_id: str | None
    created: bool
    detail: str | None = None
    code: str | None = None  # the first OperationOutcome issue code of a failure ("conflict", "forbidden", ...)
    action: Literal["create", "update"] = "create"

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def error(self) -> EhrError | None:
        """The error a single request with this answer raises; None when the write succeeded."""
        if self.ok:
            return None
        message = f"{self.resource_type} write -> {self.status}" + (f": {self.detail}" if self.detail else "")
        if self.status in (408, 425, 429) or self.status >= 500:
            return TransientEhrError(message)
        return write_error(self.status, (self.code,) if self.code else (), message, create=self.action == "create")


@dataclass(frozen=True)
class BundleWrite:
    """One entry of a batch or transaction: a conditional create or a (versioned) update."""

    method: Literal["create", "update"]
    resource: dict[str, Any]
    if_none_exist: str | None = None
    version_id: str | None = None

    @classmethod
    def create(cls, resource: dict[str, Any], if_none_exist: str) -> BundleWrite:
        return cls("create", resource, if_none_exist=if_none_exist)

    @classmethod
    def update(cls, resource: dict[str, Any], version_id: str | None) -> BundleWrite:
        return cls("update", resource, version_id=version_id)


# ---------------- pure helpers ----------------

def escape_token(value: str) -> str:
    """FHIR search escaping (R4 §3.1.1.5.7): `\\`, `,`, `|` and `$` are taken literally only when escaped."""
    return re.sub(r"([\\,|$])", r"\\\1", value)


def identifier_token(system: str, value: str) -> str:
    return f"{escape_token(system)}|{escape_token(value)}"


def identifier_query(system: str, value: str) -> str:
    """The If-None-Exist criteria for one business identifier, encoded as a URL query."""
    return urlencode([("identifier", identifier_token(system, value))])


def parse_etag(etag: str | None) -> str | None:
    """W/"3" (or "3", or 3) -> "3"."""
    if not etag:
        return None
    value = etag.strip()
    value = value[2:] if value[:2] in ('W/', 'w/') else value
    value = value.strip('"')
    return value if is_id(value) else None


def parse_location(location: str | None) -> tuple[str, str, str | None] | None:
    """[base/]Type/id[/_history/vid] -> (type, id, vid); None when it names no resource."""
    if not location:
        return None
    parts = [p for p in urlsplit(location).path.split("/") if p]
    vid = None
    if "_history" in parts:
        at = len(parts) - 1 - parts[::-1].index("_history")
        vid = parts[at + 1] if at + 1 < len(parts) and is_id(parts[at + 1]) else None
        parts = parts[:at]
    if len(parts) >= 2 and is_type(parts[-2]) and is_id(parts[-1]):
        return parts[-2], parts[-1], vid
    return None


def parse_status(status: str | None) -> int:
    """Bundle entry response.status ("201 Created", "412") -> 412; 0 when unreadable."""
    match = re.match(r"\s*(\d{3})\b", status or "")
    return int(match.group(1)) if match else 0


def outcome_issues(body: Any) -> tuple[str, tuple[str, ...]]:
    """OperationOutcome -> (diagnostics text, issue codes); never a whole payload."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return "", ()
    issues = [i for i in body.get("issue") or [] if isinstance(i, dict)]
    text = "; ".join(str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code") or "")
                     for i in issues)
    return text.strip("; ")[:500], tuple(str(i["code"]) for i in issues if i.get("code"))


def chunk_tokens(tokens: Sequence[str], budget: int) -> list[list[str]]:
    """Groups whose comma-joined, URL-encoded form fits in `budget` characters (a lone long token goes alone)."""
    chunks: list[list[str]] = []
    size = 0
    for token in tokens:
        cost = len(quote_plus(token))
        if chunks and size + 3 + cost <= budget:  # "," encodes as %2C
            chunks[-1].append(token)
            size += 3 + cost
        else:
            chunks.append([token])
            size = cost
    return chunks


def write_error(status: int, codes: Sequence[str], message: str, *, create: bool) -> PermanentEhrError:
    """A 4xx answer to a write -> the error the drain acts on."""
    refusing = bool(REFUSING_CODES.intersection(codes))
    if status == 412:  # FHIR: a conditional create answers 412 exactly when its criteria match several
        return (MultipleMatches if create or "multiple-matches" in codes else PreconditionFailed)(message, status)
    if status == 409 and not create:
        return PreconditionFailed(message, status)
    if status in (403, 405) or (status in (400, 422) and refusing) or (status == 404 and (create or refusing)):
        return WriteRefused(message, status)
    return PermanentEhrError(message, status)


def _resource_type(resource: dict[str, Any]) -> str:
    if not isinstance(resource, dict):
        raise ValidationError("a FHIR resource must be a JSON object")
    return check_type(str(resource.get("resourceType", "")))


def _criteria(if_none_exist: str) -> str:
    query = (if_none_exist or "").strip()
    if not query or query.startswith("?") or "=" not in query or _UNSAFE_HEADER.search(query):
        raise ValidationError("If-None-Exist needs search criteria such as identifier=system|value")
    return query


def _meta_version(resource: dict[str, Any]) -> str | None:
    version = version_of(resource)
    return version if version is not None and is_id(version) else None


def _version(version_id: str | None) -> str | None:
    return None if version_id is None else check_id(version_id)


def _entry_outcome(write: BundleWrite, entry: Any) -> WriteOutcome:
    rtype = str(write.resource.get("resourceType"))
    answer = entry.get("response") if isinstance(entry, dict) else None
    if not isinstance(answer, dict):
        raise PermanentEhrError(f"a {rtype} entry of the response Bundle has no response")
    status = parse_status(answer.get("status"))
    where = parse_location(answer.get("location"))
    resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else {}
    rid = where[1] if where else (resource.get("id") if status < 400 else None)
    version = (where[2] if where else None) or parse_etag(answer.get("etag")) or (
        _meta_version(resource) if rid else None)
    if rid is None and write.method == "update":
        rid = write.resource.get("id")
    detail, codes = outcome_issues(answer.get("outcome"))
    if status == 412 and write.method == "create" and "multiple-matches" not in codes:
        codes = ("multiple-matches", *codes)  # the FHIR meaning of 412 on a conditional create
    return WriteOutcome(status, rtype, rid, version, status == 201, detail or None, codes[0] if codes else None,
                        write.method)


class FhirWriter:
    """FHIR R4 REST writes for the drain, with a bearer token from `token()`; one re-authentication after a 401."""

    def __init__(self, iss: str, client: PoliteClient, token: Callable[[], str],
                 reauthenticate: Callable[[], None], *, max_url: int = MAX_URL, or_search: bool = True) -> None:
        self._authed = Authed(iss, client, token, reauthenticate)
        self._reader = FhirReader(iss, client, token, reauthenticate)
        self.iss = self._authed.iss
        self.client = client
        self.max_url = max_url
        self.or_search = or_search  # False for an EHR that ignores comma-separated values: one search a value

    def _write(self, method: str, url: str, body: dict[str, Any], headers: dict[str, str],
               *, create: bool) -> requests.Response:
        extra = {"Content-Type": FHIR_JSON, "Prefer": "return=minimal", **headers}
        client = self.client
        try:
            return self._authed.call(lambda auth: client.request(method, url, headers={**auth, **extra},
                                                                 json_body=body))
        except PermanentEhrError as exc:
            if exc.status is None or type(exc) is not PermanentEhrError:
                raise
            raise write_error(exc.status, exc.codes, str(exc), create=create) from exc

    @staticmethod
    def _outcome(response: requests.Response, rtype: str, fallback_id: str | None = None) -> WriteOutcome:
        status = response.status_code
        if not 200 <= status < 300:
            raise PermanentEhrError(f"a {rtype} write answered HTTP {status}", status)
        where = parse_location(response.headers.get("Location"))
        body: dict[str, Any] = {}
        if response.content:
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and parsed.get("resourceType") == rtype:
                body = parsed
        rid = where[1] if where else (body.get("id") or fallback_id)
        version = (where[2] if where else None) or parse_etag(response.headers.get("ETag")) or _meta_version(body)
        return WriteOutcome(status, rtype, rid, version, status == 201,
                            action="create" if fallback_id is None else "update")

    def create(self, resource: dict[str, Any], if_none_exist: str) -> WriteOutcome:
        """POST [iss]/Type with If-None-Exist: 201 created, 200 when the criteria found the one already there."""
        rtype = _resource_type(resource)
        body = {k: v for k, v in resource.items() if k != "id"}  # a create's id is the server's to choose
        response = self._write("POST", f"{self.iss}/{rtype}", body, {"If-None-Exist": _criteria(if_none_exist)},
                               create=True)
        outcome = self._outcome(response, rtype)
        log.info("EHR create %s -> %d %s/%s", rtype, outcome.status, rtype, outcome.id)
        return outcome

    def update(self, resource: dict[str, Any], version_id: str | None) -> WriteOutcome:
        """PUT [iss]/Type/id, with If-Match when the version we read is known (a 412 means it moved on)."""
        rtype = _resource_type(resource)
        rid = check_id(str(resource.get("id", "")))
        version = _version(version_id)
        headers = {"If-Match": f'W/"{version}"'} if version else {}
        response = self._write("PUT", f"{self.iss}/{rtype}/{rid}", resource, headers, create=False)
        outcome = self._outcome(response, rtype, rid)
        log.info("EHR update %s/%s -> %d (version %s)", rtype, rid, outcome.status, outcome.version_id)
        return outcome

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET [iss]/Type/id (meta.versionId is the version to send back in If-Match)."""
        return self._reader.read(resource_type, resource_id)

    def search_by_identifier(self, resource_type: str, system: str, values: Sequence[str]) -> list[dict[str, Any]]:
        """Every resource (any status, entered-in-error too) carrying one of `values` in `system`, each once."""
        check_type(resource_type)
        tokens = [identifier_token(system, v) for v in dict.fromkeys(values)]
        budget = self.max_url - len(f"{self.iss}/{resource_type}?identifier=&_count={SEARCH_PAGE}")
        chunks = chunk_tokens(tokens, budget) if self.or_search else [[t] for t in tokens]
        found: dict[str, dict[str, Any]] = {}
        for chunk in chunks:
            page = self._reader.search(resource_type, [("identifier", ",".join(chunk)), ("_count", SEARCH_PAGE)])
            while True:
                for resource in page.resources:
                    if resource.get("resourceType") == resource_type and isinstance(resource.get("id"), str):
                        found.setdefault(resource["id"], resource)
                if not page.next_url:
                    break
                page = self._reader.follow(page.next_url)
        log.info("EHR %s identifier search: %d value(s) in %d request(s) -> %d resource(s)", resource_type,
                 len(tokens), len(chunks), len(found))
        return list(found.values())

    def post_bundle(self, bundle_type: Literal["batch", "transaction"],
                    entries: Sequence[BundleWrite]) -> list[WriteOutcome]:
        """POST [iss] a batch or transaction Bundle: one outcome per entry, in order. A transaction fails whole:
        its 4xx answer is raised (the drain then sends the entries one by one to find the culprit)."""
        if bundle_type not in ("batch", "transaction"):
            raise ValidationError(f"not a write Bundle type: {bundle_type!r}")
        if not entries:
            return []
        bundle = {"resourceType": "Bundle", "type": bundle_type, "entry": [self._entry(w) for w in entries]}
        response = self._write("POST", self.iss, bundle, {}, create=False)
        try:
            body = response.json()
        except ValueError as exc:  # the writes may have happened: the caller must look before resending
            raise TransientEhrError(f"the {bundle_type}-response Bundle is not complete JSON") from exc
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle" or not isinstance(
                body.get("entry"), list) or len(body["entry"]) != len(entries):
            raise PermanentEhrError(f"the answer to a {bundle_type} of {len(entries)} is not a matching Bundle")
        outcomes = [_entry_outcome(w, e) for w, e in zip(entries, body["entry"], strict=True)]
        log.info("EHR %s of %d: %s", bundle_type, len(entries),
                 ", ".join(f"{o.resource_type}/{o.id} {o.status}" for o in outcomes))
        return outcomes

    def _entry(self, write: BundleWrite) -> dict[str, Any]:
        rtype = _resource_type(write.resource)
        if write.method == "create":
            request = {"method": "POST", "url": rtype, "ifNoneExist": _criteria(write.if_none_exist or "")}
            resource = {k: v for k, v in write.resource.items() if k != "id"}
            return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request}
        if write.method != "update":
            raise ValidationError(f"not a bundle write: {write.method!r}")
        rid = check_id(str(write.resource.get("id", "")))
        request = {"method": "PUT", "url": f"{rtype}/{rid}"}
        version = _version(write.version_id)
        if version:
            request["ifMatch"] = f'W/"{version}"'
        return {"fullUrl": f"{self.iss}/{rtype}/{rid}", "resource": write.resource, "request": request}
