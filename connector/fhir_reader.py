"""FhirReader: the FHIR R4 reads a sync needs (search windows, paging, _history, id lists), through a PoliteClient.

Paging links are followed only when they point at the EHR's own `iss`, so a hostile or misconfigured server
cannot send our bearer token elsewhere. One re-authentication after a 401 covers a token revoked or expired
mid-sync; a second 401 is the caller's to handle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from connector.polite import PoliteClient
from prm.errors import AuthExpiredError, PermanentEhrError, ValidationError
from prm.fhir_names import is_id, is_type

# A literal reference's type and id at its end (relative or absolute), with or without `/_history/<version>`.
_REFERENCE = re.compile(r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
                        r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
ID_PAGE = "1000"
T = TypeVar("T")


@dataclass(frozen=True)
class Page:
    """One Bundle page as the sync sees it; `deleted` is only filled from _history pages."""

    resources: list[dict[str, Any]]  # entries with search.mode == "match" (or no mode), in order
    next_url: str | None
    total: int | None
    deleted: list[tuple[str, str]] = field(default_factory=list)  # (resource_type, id) from _history DELETEs
    server_time: str | None = None  # Bundle.meta.lastUpdated: when the server ran the search (its clock)


class Authed:
    """Calls with the current bearer token; after a 401, `reauthenticate()` once and try again once."""

    def __init__(self, iss: str, client: PoliteClient, token: Callable[[], str],
                 reauthenticate: Callable[[], None]) -> None:
        self.iss = iss.rstrip("/")
        self.client = client
        self._token = token
        self._reauthenticate = reauthenticate

    def on_ehr(self, url: str, what: str) -> str:
        """`url` if it lies under iss; never send the token off the EHR."""
        if url == self.iss or url.startswith((self.iss + "/", self.iss + "?")):
            return url
        raise PermanentEhrError(f"refusing a {what} that is not on the EHR ({urlsplit(url).netloc or 'relative'})")

    def call(self, send: Callable[[dict[str, str]], T], accept: str = FHIR_JSON) -> T:
        try:
            return send({"Accept": accept, "Authorization": f"Bearer {self._token()}"})
        except AuthExpiredError:
            log.info("EHR answered 401; re-authenticating once")
            self._reauthenticate()
        return send({"Accept": accept, "Authorization": f"Bearer {self._token()}"})


def check_type(resource_type: str) -> str:
    """The type, if it is one: a caller's value never becomes an arbitrary path."""
    if not is_type(resource_type):
        raise ValidationError(f"not a FHIR resource type: {resource_type!r}")
    return resource_type


def check_id(resource_id: str) -> str:
    if not is_id(resource_id):
        raise ValidationError(f"not a FHIR id: {resource_id!r}")
    return resource_id


def in_last_updated_order(resources: list[dict[str, Any]]) -> bool:
    """Whether the resources' `meta.lastUpdated` never goes back: what `_sort=_lastUpdated` promises. Many EHRs
    ignore `_sort` (FHIR lets a server ignore a parameter it does not support) and answer in their own order;
    a page's newest instant then says nothing about what the next page holds. Resources without an instant,
    or with one that does not parse, are passed over."""
    previous: datetime | None = None
    for resource in resources:
        meta = resource.get("meta")
        stamp = meta.get("lastUpdated") if isinstance(meta, dict) else None
        try:
            current = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
        except ValueError:
            current = None
        if current is None or current.tzinfo is None:
            continue
        if previous is not None and current < previous:
            return False
        previous = current
    return True


def _deleted_ref(entry: dict[str, Any]) -> tuple[str, str] | None:
    request = entry.get("request") or {}
    if str(request.get("method", "")).upper() != "DELETE":
        return None
    parts = str(request.get("url") or entry.get("fullUrl") or "").split("?")[0].split("/")
    if "_history" in parts:
        parts = parts[:parts.index("_history")]
    if len(parts) >= 2 and is_type(parts[-2]) and is_id(parts[-1]):
        return parts[-2], parts[-1]
    return None


def page_of(body: dict[str, Any]) -> Page:
    """Bundle -> Page. In a history Bundle (newest first, FHIR R4 §3.1.0.9) only each resource's newest entry
    on the page counts, so an older version or a delete never undoes a newer one."""
    if body.get("resourceType") != "Bundle":
        raise PermanentEhrError(f"expected a Bundle, got {body.get('resourceType')!r}")
    history = body.get("type") == "history"
    resources: list[dict[str, Any]] = []
    deleted: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for entry in body.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        gone = _deleted_ref(entry) if history else None
        if gone is not None:
            if gone not in seen:
                seen.add(gone)
                deleted.append(gone)
            continue
        resource = entry.get("resource")
        mode = (entry.get("search") or {}).get("mode")
        if not isinstance(resource, dict) or mode not in (None, "match"):
            continue
        if resource.get("resourceType") == "OperationOutcome":
            continue
        if history:
            key = (str(resource.get("resourceType")), str(resource.get("id")))
            if key in seen:
                continue
            seen.add(key)
        resources.append(resource)
    next_url = next((link.get("url") for link in body.get("link") or []
                     if isinstance(link, dict) and link.get("relation") == "next" and link.get("url")), None)
    total = body.get("total")
    stamp = (body.get("meta") or {}).get("lastUpdated") if isinstance(body.get("meta"), dict) else None
    return Page(resources, next_url, total if isinstance(total, int) else None, deleted,
                stamp if isinstance(stamp, str) else None)


@dataclass(frozen=True)
class GroupRoster:
    """A Group's active members: the Patients its references name (in order, once each), and how many members
    name nobody readable (an identifier only, a contained or `urn:` reference): who those are is unknown."""

    patients: tuple[str, ...]
    unresolved: int = 0

    @property
    def unreadable(self) -> str | None:
        """Why who is in the Group cannot be told from it (it lists nobody, or names members by no Patient
        reference), else None: nothing is kept to, or erased by, such a roster."""
        if self.unresolved:
            return f"names {self.unresolved} member(s) by no Patient reference fhir-prm can read"
        return None if self.patients else "lists no members"


def group_roster(group: dict[str, Any]) -> GroupRoster:
    """The Group's active members (relative, absolute or versioned references); members of other types (a
    Practitioner in a person Group) are no patients, and not unresolved either."""
    found: list[str] = []
    unresolved = 0
    for member in group.get("member") or []:
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        match = _REFERENCE.search(reference) if isinstance(reference, str) else None
        if match is None:
            unresolved += 1
        elif match["type"] == "Patient" and match["id"] not in found:
            found.append(match["id"])
    return GroupRoster(tuple(found), unresolved)


def _keep_since(next_url: str | None, asked: str) -> str | None:
    """A history next link that lost `_since` (sekmet-fhir 0.1 drops it) would page through all of history."""
    if next_url is None:
        return None
    since = [v for k, v in parse_qsl(urlsplit(asked).query) if k == "_since"]
    parts = urlsplit(next_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not since or any(k == "_since" for k, _ in query):
        return next_url
    return urlunsplit(parts._replace(query=urlencode([*query, ("_since", since[0])])))


class FhirReader:
    """FHIR R4 REST reads for the sync, with a bearer token from `token()`; one re-authentication after a 401."""

    def __init__(self, iss: str, client: PoliteClient, token: Callable[[], str],
                 reauthenticate: Callable[[], None]) -> None:
        self._authed = Authed(iss, client, token, reauthenticate)
        self.iss = self._authed.iss

    def _get(self, url: str, params: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        client = self._authed.client
        return self._authed.call(lambda headers: client.request_json("GET", url, headers=headers, params=params))

    def _page(self, url: str, params: list[tuple[str, str]] | None = None) -> Page:
        return page_of(self._get(url, params))

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> Page:
        """GET [iss]/Type?params: the first page of a search window."""
        return self._page(f"{self.iss}/{check_type(resource_type)}", list(params))

    def follow(self, next_url: str) -> Page:
        """The page a `next` link names; a link off the EHR is refused before any request."""
        page = self._page(self._authed.on_ehr(next_url, "next link"))
        kept = _keep_since(page.next_url, next_url)
        return page if kept == page.next_url else Page(page.resources, kept, page.total, page.deleted)

    def history(self, resource_type: str, since: str, count: int) -> Page:
        """GET [iss]/Type/_history?_since=..&_count=..: changes and deletions since a moment."""
        url = f"{self.iss}/{check_type(resource_type)}/_history"
        page = self._page(url, [("_since", since), ("_count", str(count))])
        kept = _keep_since(page.next_url, f"{url}?{urlencode([('_since', since)])}")
        return page if kept == page.next_url else Page(page.resources, kept, page.total, page.deleted)

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET [iss]/Type/id, both parts checked so no caller can smuggle a path or query in."""
        body = self._get(f"{self.iss}/{check_type(resource_type)}/{check_id(resource_id)}")
        if body.get("resourceType") != resource_type:
            raise PermanentEhrError(f"asked for {resource_type}, got {body.get('resourceType')!r}")
        return body

    def group_roster(self, group_id: str) -> GroupRoster:
        """The Group's active members (the clinic's population where IT named an export Group)."""
        return group_roster(self.read("Group", group_id))

    def ids(self, resource_type: str, params: list[tuple[str, str]] | None = None) -> Iterator[str]:
        """Every id the search finds (`_elements=id`, large pages): what still exists, to reconcile deletions."""
        given = list(params or [])
        names = {k for k, _ in given}
        query = given + [(k, v) for k, v in (("_elements", "id"), ("_count", ID_PAGE)) if k not in names]
        page: Page | None = self.search(resource_type, query)
        while page is not None:
            for resource in page.resources:
                if resource.get("resourceType") == resource_type and isinstance(resource.get("id"), str):
                    yield resource["id"]
            page = self.follow(page.next_url) if page.next_url else None
