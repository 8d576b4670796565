"""SMART v1/v2 scope algebra, so a v1 grant (`.read`) can be compared with the v2 scopes we asked for (`.rs`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

V2_ORDER = "cruds"
V1_PERMS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset(V2_ORDER)}
_CLINICAL = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")


@dataclass(frozen=True)
class ClinicalScope:
    """`system/Task.crus` -> context system, type Task, perms {c, r, u, s}; '*' type means every type."""

    context: str
    rtype: str
    perms: frozenset[str]
    v1: bool

    def covers(self, other: ClinicalScope) -> frozenset[str]:
        """The perms of `other` this scope grants."""
        if self.context != other.context or self.rtype not in ("*", other.rtype):
            return frozenset()
        return self.perms & other.perms


def parse(scope: str) -> ClinicalScope | None:
    """None for non-clinical scopes (openid, launch, ...) and malformed ones."""
    match = _CLINICAL.match(scope)
    if not match:
        return None
    context, rtype, perm = match.group(1), match.group(2), match.group(3)
    if perm in V1_PERMS:
        return ClinicalScope(context, rtype, V1_PERMS[perm], v1=True)
    if perm and set(perm) <= set(V2_ORDER) and len(set(perm)) == len(perm):
        return ClinicalScope(context, rtype, frozenset(perm), v1=False)
    return None


def perms_text(perms: frozenset[str]) -> str:
    return "".join(c for c in V2_ORDER if c in perms)


def missing(requested: str, granted: str) -> list[str]:
    """Requested scopes the grant does not fully cover, each with what is lacking (v1 grants count)."""
    have_words = set(granted.split())
    have = [s for s in (parse(w) for w in have_words) if s is not None]
    out: list[str] = []
    for word in requested.split():
        wanted = parse(word)
        if wanted is None:
            if word not in have_words:
                out.append(word)
            continue
        covered: frozenset[str] = frozenset()
        for scope in have:
            covered |= scope.covers(wanted)
        lacking = wanted.perms - covered
        if lacking == wanted.perms:
            out.append(word)
        elif lacking:
            out.append(f"{word} (lacks {perms_text(lacking)})")
    return out


def supported_gaps(ours: str, supported: list[str]) -> list[str]:
    """Our scopes that scopes_supported (wildcards allowed) does not cover."""
    return missing(ours, " ".join(supported))


def to_v1(scopes: str) -> str:
    """The SMART v1 spelling of v2 scopes, for an EHR that only speaks v1 (reads -> .read, writes -> .write)."""
    out: list[str] = []
    for word in scopes.split():
        scope = parse(word)
        if scope is None or scope.v1:
            spelled = [word]
        else:
            spelled = [f"{scope.context}/{scope.rtype}.{name}" for name in ("read", "write")
                       if scope.perms & V1_PERMS[name]]
        out.extend(s for s in spelled if s not in out)
    return " ".join(out)


def allows(granted: str, rtype: str, perm: str, context: str = "system") -> bool:
    """Does the grant allow `perm` (one of c r u d s) on `rtype`?"""
    probe = ClinicalScope(context, rtype, frozenset(perm), v1=False)
    return any(perm in s.covers(probe) for s in (parse(w) for w in granted.split()) if s is not None)


def user_allows(granted: str, rtype: str, perm: str) -> bool:
    """Does a user-facing launch's grant allow `perm` on `rtype`, for the patient in context (`patient/`) or
    anything the user may see (`user/`)?"""
    return allows(granted, rtype, perm, "patient") or allows(granted, rtype, perm, "user")
