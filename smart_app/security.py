"""Response headers for pages that live inside an EHR iframe and may show PHI.

- `frame-ancestors` from the connection's configured EHR origins (all enabled connections' origins for
  pages not yet tied to one, so a friendly error can still show in the sidebar); `'none'` for the admin
  pages under /admin, which no EHR frames (clickjacking a settings page is the risk there);
- `Cache-Control: no-store` and `Referrer-Policy: no-referrer`, so neither caches nor Referer headers
  carry the launch handle or patient data anywhere.
"""

from __future__ import annotations

from flask import Flask, g, request
from sqlmodel import col, select
from werkzeug.wrappers import Response

from prm import connections
from prm.models import Connection
from smart_app.context import prm


def _frame_origins() -> list[str]:
    ctx = prm()
    launch = getattr(g, "launch", None)
    with ctx.db.session() as session:
        if launch is not None:
            row = connections.get(session, launch.connection_id)
            return list(row.frame_origins) if row else []
        rows = session.exec(select(Connection.frame_origins).where(col(Connection.enabled).is_(True)))
        return sorted({origin for origins in rows for origin in origins})


def install(app: Flask) -> None:
    @app.after_request
    def _headers(response: Response) -> Response:
        origins = [] if request.path.startswith("/admin") else _frame_origins()
        ancestors = " ".join(origins) if origins else "'none'"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            f"form-action 'self'; base-uri 'none'; object-src 'none'; frame-ancestors {ancestors}"
        )
        if not response.cache_control.public:  # only public documents (the JWKS) say public themselves
            response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response
