"""The connection form's text fields <-> ConnectionSpec, so the page feeds the same validation as the CLI.

Lists are one item a line (frame origins; `KEY=ROLE` role mappings; `REASON=OWNER` ticket routes;
`Organization/id | name | zone` clinics). Secrets are never echoed back into a form: an empty secret field
means "keep the stored one".
"""

from __future__ import annotations

from typing import Any

from werkzeug.datastructures import MultiDict

from prm.connections import DEFAULT_BACKEND_SCOPES, DEFAULT_USER_SCOPES, ConnectionSpec
from prm.errors import ValidationError
from prm.models import Connection

SECRET_FIELDS = ("client_secret", "backend_client_secret")
TEXT_FIELDS = ("name", "iss", "client_id", "client_auth", "scopes", "frame_origins", "role_mapping", "default_role",
               "clinics", "signing_alg", "backend_client_id", "backend_auth", "backend_scopes", "export_group",
               "ehr_max_in_flight", "ehr_requests_per_minute", "ticket_routing")
# What an update audit record names when it changed (values are never written to the audit).
AUDITED_COLUMNS = ("iss", "client_id", "client_auth", "client_secret_enc", "scopes", "frame_origins", "role_mapping",
                   "default_role", "enabled", "clinics", "signing_alg", "backend_client_id", "backend_auth",
                   "backend_client_secret_enc", "backend_scopes", "export_group", "ehr_max_in_flight",
                   "ehr_requests_per_minute", "ticket_routing")


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _key_values(text: str, what: str, example: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValidationError(f"{what} lines are {example}, got {line!r}")
        mapping[key.strip()] = value.strip()
    return mapping


def _clinics(text: str) -> tuple[dict[str, str], ...]:
    clinics = []
    for line in _lines(text):
        parts = [part.strip() for part in line.split("|")]
        if len(parts) != 3:
            raise ValidationError(f"clinic lines are 'Organization/id | name | time zone', got {line!r}")
        clinics.append({"organization": parts[0], "name": parts[1], "timezone": parts[2]})
    return tuple(clinics)


def _whole(text: str, what: str, default: int) -> int:
    """A whole-number field; empty means the default (the range is checked with the rest of the spec)."""
    return whole_number(text, what) if text.strip() else default


def whole_number(text: str, what: str) -> int:
    """A whole-number field that must be filled (its range is the domain's to check)."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValidationError(f"{what} must be a whole number, got {text.strip()!r}") from None


def spec_from_form(form: MultiDict[str, str], *, name: str | None = None,
                   enabled: bool | None = None) -> ConnectionSpec:
    """Read the posted form; `name`/`enabled` come from the row on edit (the name is the key, enabling has buttons)."""
    backend_auth = form.get("backend_auth", "").strip() or None
    return ConnectionSpec(
        name=name if name is not None else form.get("name", "").strip(),
        iss=form.get("iss", ""),
        client_id=form.get("client_id", ""),
        client_auth=form.get("client_auth", "public"),
        client_secret=form.get("client_secret") or None,
        scopes=form.get("scopes", ""),
        frame_origins=tuple(_lines(form.get("frame_origins", ""))),
        role_mapping=_key_values(form.get("role_mapping", ""), "role mapping",
                                 "KEY=ROLE (e.g. Practitioner=clinician)"),
        default_role=form.get("default_role", "clinician"),
        enabled=enabled if enabled is not None else form.get("enabled") == "on",
        clinics=_clinics(form.get("clinics", "")),
        signing_alg=form.get("signing_alg", "RS384"),
        backend_client_id=form.get("backend_client_id", "").strip() or None,
        backend_auth=backend_auth,
        backend_client_secret=form.get("backend_client_secret") or None,
        backend_scopes=form.get("backend_scopes", ""),
        export_group=form.get("export_group", "").strip() or None,
        ehr_max_in_flight=_whole(form.get("ehr_max_in_flight", ""), "requests in flight", 4),
        ehr_requests_per_minute=_whole(form.get("ehr_requests_per_minute", ""), "requests a minute", 1200),
        ticket_routing=_key_values(form.get("ticket_routing", ""), "ticket routing",
                                   "REASON=OWNER (e.g. default=Organization/org-1)"),
    )


def values_from_form(form: MultiDict[str, str]) -> dict[str, Any]:
    """What the person typed, to show the form again after an error (secrets left out)."""
    values: dict[str, Any] = {key: form.get(key, "") for key in TEXT_FIELDS}
    values["enabled"] = form.get("enabled") == "on"
    return values


def values_for_new() -> dict[str, Any]:
    return {"client_auth": "public", "scopes": DEFAULT_USER_SCOPES, "default_role": "clinician", "enabled": True,
            "signing_alg": "RS384", "backend_auth": "", "backend_scopes": DEFAULT_BACKEND_SCOPES,
            "ehr_max_in_flight": 4, "ehr_requests_per_minute": 1200}


def values_from_row(row: Connection) -> dict[str, Any]:
    return {
        "name": row.name, "iss": row.iss, "client_id": row.client_id, "client_auth": row.client_auth,
        "scopes": row.scopes, "frame_origins": "\n".join(row.frame_origins),
        "role_mapping": "\n".join(f"{key}={role}" for key, role in row.role_mapping.items()),
        "default_role": row.default_role, "enabled": row.enabled,
        "clinics": "\n".join(f"{c['organization']} | {c.get('name', '')} | {c['timezone']}" for c in row.clinics),
        "signing_alg": row.signing_alg, "backend_client_id": row.backend_client_id or "",
        "backend_auth": row.backend_auth or "", "backend_scopes": row.backend_scopes,
        "export_group": row.export_group or "",
        "ehr_max_in_flight": row.ehr_max_in_flight, "ehr_requests_per_minute": row.ehr_requests_per_minute,
        "ticket_routing": "\n".join(f"{reason}={owner}" for reason, owner in row.ticket_routing.items()),
    }


def snapshot(row: Connection) -> dict[str, Any]:
    """The audited columns' values, to name what an update changed."""
    return {column: getattr(row, column) for column in AUDITED_COLUMNS}


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    names = [column for column in AUDITED_COLUMNS if before.get(column) != after.get(column)]
    return [name.removesuffix("_enc") for name in names]
