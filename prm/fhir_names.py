"""FHIR's names as every layer checks them: ids, resource type names, references, and the canonical URLs of
the implementation guides we speak. One copy, which the connector may import too (it has no imports of ours).

Checks match the whole value (`fullmatch`): a pattern anchored with `$` under `re.match` also accepts a
trailing newline, which an id must not carry into a URL or a reference.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

ID = r"[A-Za-z0-9\-.]{1,64}"  # FHIR R4 `id`
TYPE = r"[A-Z][A-Za-z]{1,63}"  # a resource type name
REFERENCE = re.compile(rf"(?P<type>{TYPE})/(?P<id>{ID})")  # a relative literal reference, Type/id
_ID = re.compile(ID)
_TYPE = re.compile(TYPE)

# R4 Subscriptions Backport IG (topic-based Subscriptions in R4)
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
BACKPORT_SUBSCRIPTION = f"{BACKPORT}/backport-subscription"


def version_of(resource: Mapping[str, Any]) -> str | None:
    """`meta.versionId` as text (servers send a string, a few a number), None when the resource carries none.
    Not checked here: a writer checks it as an id before it goes into an If-Match."""
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return str(version) if isinstance(version, str | int) and not isinstance(version, bool) else None


def is_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def is_type(value: str) -> bool:
    return _TYPE.fullmatch(value) is not None


def is_reference(value: str, types: Collection[str] | None = None) -> bool:
    """Whether `value` is `Type/id` (of one of `types`, when given)."""
    match = REFERENCE.fullmatch(value)
    return match is not None and (types is None or match["type"] in types)
