"""CSRF tokens bound to what the form belongs to (a launch handle, an admin session), never to a cookie.

A cross-site EHR iframe may drop every cookie, so the sidebar's tokens are bound to its launch handle;
admin forms bind to the admin session. Tokens are signed and timed with itsdangerous (Flask's own
signing library), so a token minted for one handle or session is refused for any other.
"""

from __future__ import annotations

import hmac

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from prm.errors import ValidationError

MAX_AGE_S = 8 * 3600


def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt="fhir-prm-csrf")


def issue(secret_key: str, bound_to: str, purpose: str) -> str:
    """A token for one form `purpose` of one launch handle or admin session."""
    return _serializer(secret_key).dumps([bound_to, purpose])


def check(secret_key: str, token: str | None, bound_to: str, purpose: str) -> None:
    """Raise ValidationError unless `token` was issued for exactly this binding and purpose."""
    if not token:
        raise ValidationError("the form has no CSRF token; reload the page and try again")
    try:
        value = _serializer(secret_key).loads(token, max_age=MAX_AGE_S)
    except SignatureExpired as exc:
        raise ValidationError("the form has expired; reload the page and try again") from exc
    except BadSignature as exc:
        raise ValidationError("the form's CSRF token is not valid") from exc
    if not (isinstance(value, list) and len(value) == 2
            and hmac.compare_digest(str(value[0]), bound_to) and hmac.compare_digest(str(value[1]), purpose)):
        raise ValidationError("the form's CSRF token belongs to another session")
