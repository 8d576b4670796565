"""What the admin pages show of a connection: never a secret, and a capability profile read defensively.

The capability profile is written by `prm connection check` (`ok`, `errors`, `warnings`, ...); it may be
empty (never checked), and an item that is an object rather than a string is shown by its `message`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CapabilitySummary:
    status: str  # not checked | ok | errors
    errors: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.status == "not checked":
            return "not checked"
        counts = f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return f"{self.status} · {counts}"


def _messages(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if isinstance(item, dict):
            out.append(str(item.get("message") or item.get("code") or item))
        else:
            out.append(str(item))
    return tuple(out)


def capability(profile: dict[str, Any] | None) -> CapabilitySummary:
    if not profile:
        return CapabilitySummary("not checked", (), ())
    errors, warnings = _messages(profile.get("errors")), _messages(profile.get("warnings"))
    failing = bool(errors) or profile.get("ok") is False
    return CapabilitySummary("errors" if failing else "ok", errors, warnings)


def secret_state(sealed: str | None) -> str:
    return "(set)" if sealed else "(not set)"
