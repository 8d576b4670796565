"""One error tree for the whole product, so callers catch by meaning, not by library.

    PrmError
    ├── ConfigError            a setting is missing or malformed (start-up stops with one line)
    ├── StorageError           the database cannot be reached or migrated
    ├── NotFoundError          a row the caller named does not exist
    ├── ValidationError        input at an edge (CLI, form, API) is not acceptable
    ├── PermissionDenied       the role lacks the action (see prm.permissions)
    ├── SignInRefused          a local admin sign-in failed or is throttled (one generic message)
    ├── LaunchError            a SMART launch cannot start or complete
    └── EhrError               talking to an EHR failed (connector raises its own subclasses)
        ├── TransientEhrError  worth retrying later (timeouts, 429, 5xx)
        ├── AuthExpiredError   the token is no longer accepted (401)
        └── PermanentEhrError  retrying will not help (4xx other than 401/429)
"""

from __future__ import annotations

import traceback


class PrmError(Exception):
    """Base of every error fhir-prm raises on purpose."""


class ConfigError(PrmError):
    """A setting is missing or malformed."""


class StorageError(PrmError):
    """The database cannot be reached, or its schema is not current."""


class NotFoundError(PrmError):
    """A row named by the caller does not exist."""


class ValidationError(PrmError):
    """Input arriving at an edge is not acceptable; the message says why."""


class ConflictError(PrmError):
    """The request names something that already exists as something else (a business key another patient's item
    carries): refused, and nothing of the other is told."""


class PermissionDenied(PrmError):
    """The acting role lacks the requested action."""

    def __init__(self, role: str, action: str) -> None:
        super().__init__(f"role {role!r} may not {action!r}")
        self.role = role
        self.action = action


class SignInRefused(PrmError):
    """A local admin sign-in was refused; `reason` (wrong_credentials | throttled) is for audit, not the page."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class LaunchError(PrmError):
    """A SMART launch cannot start or complete; `reason` is a stable code for pages and audit."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class EhrError(PrmError):
    """Talking to an EHR failed. `ehr_said` is the EHR's own words in its answer (OperationOutcome diagnostics,
    or the start of a body that is not FHIR), part of the message: free text that may name a patient or quote
    what we sent. The message is kept where IT reads it (a stream's or an outbox row's error, in the database);
    a log line carries `loggable(exc)`, which leaves those words out (DESIGN.md invariant 6)."""

    def __init__(self, message: str, *, ehr_said: str = "") -> None:
        super().__init__(message)
        self.ehr_said = ehr_said


class TransientEhrError(EhrError):
    """The EHR may succeed if asked again later (timeouts, 429, 5xx)."""

    def __init__(self, message: str, retry_after_s: float | None = None, *, ehr_said: str = "") -> None:
        super().__init__(message, ehr_said=ehr_said)
        self.retry_after_s = retry_after_s


class AuthExpiredError(EhrError):
    """The EHR no longer accepts our token (401)."""


class PermanentEhrError(EhrError):
    """The EHR refused in a way that retrying will not change; `codes` are its OperationOutcome issue codes
    (they tell "this server does not take that" from "this resource is wrong")."""

    def __init__(self, message: str, status: int | None = None, codes: tuple[str, ...] = (), *,
                 ehr_said: str = "") -> None:
        super().__init__(message, ehr_said=ehr_said)
        self.status = status
        self.codes = codes


WITHHELD = "[the EHR's own words: kept with the error in fhir-prm's database, not in logs]"


def loggable(exc: BaseException) -> str:
    """`Type: message` for a log line, with the EHR's own words (`EhrError.ehr_said`) left out."""
    return _withheld(f"{type(exc).__name__}: {exc}", exc)


def loggable_traceback(exc: BaseException) -> str:
    """The traceback for a log line (a bug of ours needs it), with the EHR's own words left out wherever they
    appear in its chain (an EhrError caught and another raised from it)."""
    return _withheld("".join(traceback.format_exception(exc)).rstrip(), exc)


def _withheld(text: str, exc: BaseException) -> str:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        said = getattr(link, "ehr_said", "")
        if said:
            text = text.replace(said, WITHHELD)
        link = link.__cause__ or link.__context__
    return text
