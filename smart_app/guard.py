"""The one permission decorator: resolves who is acting from the launch handle and checks the table.

Every route that touches patient data or configuration uses `requires(Action.X)`; the check, the
403 page and the audit record of a denial live here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import abort, g, render_template

from prm import audit, launches
from prm.audit import Actor
from prm.models import Launch
from prm.permissions import Action, allows
from smart_app.context import prm

F = TypeVar("F", bound=Callable[..., Any])


def actor_for(launch: Launch) -> Actor:
    return Actor(kind="user", name=launch.fhir_user or "unknown", role=launch.role,
                 connection_id=launch.connection_id, launch_id=launch.id)


def requires(action: Action) -> Callable[[F], F]:
    """Load the active launch named by the URL's `handle` and demand `action` of its role."""

    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = prm()
            handle = kwargs.get("handle", "")
            with ctx.db.session() as session:
                launch = launches.by_handle(session, handle)
                if launch is None or launch.status != "active":
                    abort(404)
                if not allows(launch.role or "", action):
                    audit.record(session, ctx.settings.clock, actor_for(launch), action.value,
                                 patient_id=launch.patient_id, outcome="denied", detail="role lacks action")
                    denied = True
                else:
                    denied = False
            g.launch = launch
            g.actor = actor_for(launch)
            if denied:
                return render_template("denied.html", action=action.value, role=launch.role, handle=handle), 403
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
