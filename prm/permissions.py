"""Who may do what: one table in code, enforced by one decorator on every route (smart_app.guard).

Later issues add rows here, never ad-hoc checks in views.
"""

from __future__ import annotations

from enum import StrEnum

from prm.errors import PermissionDenied, ValidationError


class Role(StrEnum):
    FRONT_DESK = "front_desk"
    CLINICIAN = "clinician"
    PRACTICE_MANAGER = "practice_manager"
    IT_ADMIN = "it_admin"


class Action(StrEnum):
    VIEW_PATIENT = "patient.view"
    END_OWN_SESSION = "launch.end"
    VIEW_CONNECTIONS = "connection.view"
    MANAGE_CONNECTIONS = "connection.manage"
    VIEW_AUDIT = "audit.view"
    OPEN_CARE_TICKET = "care_ticket.open"
    RECORD_OUTREACH = "outreach.record"
    MANAGE_OUTBOX = "outbox.manage"  # retry or discard writes the EHR did not take


_FOLLOW_UP = {Action.OPEN_CARE_TICKET, Action.RECORD_OUTREACH}
PERMISSIONS: dict[Role, frozenset[Action]] = {
    Role.FRONT_DESK: frozenset({Action.VIEW_PATIENT, Action.END_OWN_SESSION, *_FOLLOW_UP}),
    Role.CLINICIAN: frozenset({Action.VIEW_PATIENT, Action.END_OWN_SESSION, *_FOLLOW_UP}),
    Role.PRACTICE_MANAGER: frozenset(
        {Action.VIEW_PATIENT, Action.END_OWN_SESSION, Action.VIEW_CONNECTIONS, Action.VIEW_AUDIT, *_FOLLOW_UP}
    ),
    Role.IT_ADMIN: frozenset(
        {Action.VIEW_PATIENT, Action.END_OWN_SESSION, Action.VIEW_CONNECTIONS, Action.MANAGE_CONNECTIONS,
         Action.VIEW_AUDIT, Action.MANAGE_OUTBOX}
    ),
}


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError as exc:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationError(f"unknown role {value!r} (one of: {allowed})") from exc


def allows(role: Role | str, action: Action) -> bool:
    return action in PERMISSIONS.get(Role(role), frozenset())


def require(role: Role | str, action: Action) -> None:
    if not allows(role, action):
        raise PermissionDenied(str(role), action.value)


def role_for_user(fhir_user: str | None, mapping: dict[str, str], default: str) -> Role:
    """A launched user's role from the connection's mapping.

    Keys are tried from most to least specific: the full reference (`Practitioner/prac-1`), then the
    resource type (`Practitioner`, `RelatedPerson`); the connection's default role applies otherwise.
    """
    if fhir_user:
        reference = fhir_user.split("/_history/")[0]
        parts = reference.rstrip("/").split("/")
        relative = "/".join(parts[-2:]) if len(parts) >= 2 else reference
        for key in (relative, parts[-2] if len(parts) >= 2 else ""):
            if key and key in mapping:
                return parse_role(mapping[key])
    return parse_role(default)
