"""SMART v1/v2 scope algebra in one place, so the token endpoint and the FHIR proxy agree on what a scope means."""
from __future__ import annotations

import re
from dataclasses import dataclass

V2_ORDER = "cruds"
V1_PERMS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset(V2_ORDER)}
CONTEXTS = ("patient", "user", "system")
SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?$")
NON_CLINICAL = ("openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                "offline_access", "online_access")


@dataclass(frozen=True)
class ClinicalScope:
    """`patient/Observation.rs?category=x` -> context, type ('*' = all), perms; params kept, not enforced."""

    context: str
    rtype: str
    perms: frozenset[str]
    v1: bool
    params: str = ""

    def covers(self, rtype: str, perm: str) -> bool:
        return self.rtype in ("*", rtype) and perm in self.perms

    def render(self, v1: bool | None = None) -> str:
        as_v1 = self.v1 if v1 is None else v1
        if as_v1:
            name = next((k for k, v in V1_PERMS.items() if v == self.perms), None)
            if name is None:
                raise ValueError("not expressible in v1")
            return f"{self.context}/{self.rtype}.{name}"
        return f"{self.context}/{self.rtype}.{''.join(c for c in V2_ORDER if c in self.perms)}{self.params}"


def parse(scope: str) -> ClinicalScope | None:
    """None for non-clinical scopes (openid, launch, ...) and for malformed ones."""
    m = SCOPE_RE.match(scope)
    if not m:
        return None
    context, rtype, perm, params = m.group(1), m.group(2), m.group(3), m.group(4) or ""
    if perm in V1_PERMS:
        return ClinicalScope(context, rtype, V1_PERMS[perm], v1=True)
    if perm and all(c in V2_ORDER for c in perm) and list(perm) == sorted(perm, key=V2_ORDER.index) \
            and len(set(perm)) == len(perm):
        return ClinicalScope(context, rtype, frozenset(perm), v1=False, params=params)
    return None


def parse_all(scope: str | None) -> list[ClinicalScope]:
    return [c for c in (parse(s) for s in (scope or "").split()) if c is not None]


def to_v1(scope: ClinicalScope) -> list[ClinicalScope]:
    """The nearest v1 scopes: read if r or s was asked for, write if any of c/u/d (v1 has no finer grain)."""
    out = []
    if scope.perms & V1_PERMS["read"]:
        out.append(ClinicalScope(scope.context, scope.rtype, V1_PERMS["read"], v1=True))
    if scope.perms & V1_PERMS["write"]:
        out.append(ClinicalScope(scope.context, scope.rtype, V1_PERMS["write"], v1=True))
    return out


def grant(requested: str | None, allowed: str, v1_only: bool = False) -> str:
    """requested ∩ allowed, in the requested syntax (or v1 when the EHR only speaks v1)."""
    allowed_words = set(allowed.split())
    ceiling = parse_all(allowed)
    if v1_only:  # a v1 EHR registered the client in v1 terms too
        ceiling = [v1 for c in ceiling for v1 in (to_v1(c) if not c.v1 else [c])]
    out: list[str] = []
    for word in (requested or "").split():
        clinical = parse(word)
        if clinical is None:
            if word in allowed_words and word in NON_CLINICAL:
                out.append(word)
            continue
        wanted = to_v1(clinical) if v1_only and not clinical.v1 else [clinical]
        for want in wanted:
            perms = frozenset(p for p in want.perms if any(
                a.context == want.context and a.covers(want.rtype, p) for a in ceiling))
            if not perms:
                continue
            got = ClinicalScope(want.context, want.rtype, perms, want.v1, want.params)
            if got.v1 and perms != want.perms:  # a partial v1 grant has no v1 spelling
                if v1_only:
                    continue
                got = ClinicalScope(want.context, want.rtype, perms, v1=False)
            rendered = got.render()
            if rendered not in out:
                out.append(rendered)
    return " ".join(out)


def allowing(scopes: list[ClinicalScope], rtype: str, perm: str) -> set[str]:
    """The contexts (patient/user/system) whose scopes allow `perm` on `rtype`."""
    return {s.context for s in scopes if s.covers(rtype, perm)}


def supported(v1_only: bool) -> list[str]:
    """scopes_supported for discovery: the launch/identity scopes plus wildcard clinical ones."""
    clinical = [f"{c}/*.{p}" for c in CONTEXTS for p in (("read", "write", "*") if v1_only else ("cruds", "rs"))]
    return [*NON_CLINICAL, *clinical]
