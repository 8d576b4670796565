"""A capability profile as lines for a terminal: a summary, then every error and warning on its own line."""

from __future__ import annotations

from typing import Any

OK, BAD, WARN = "green", "red", "yellow"


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _backend_line(backend: dict[str, Any]) -> str:
    if not backend.get("configured"):
        return "not configured"
    how = backend.get("auth", "")
    if backend.get("kid"):
        how += f" {backend.get('alg')}, kid {str(backend['kid'])[:12]}…"
    if not backend.get("token"):
        return f"{backend.get('client_id')} ({how}): no token"
    requested, missing = backend.get("requested", []), backend.get("missing", [])
    read = backend.get("test_read") or {}
    outcome = (f"{read.get('request')} -> {_n(read.get('entries', 0), 'resource')}" if read.get("ok")
               else f"{read.get('request')} -> {read.get('detail')}") if read else "no test read"
    return (f"{backend.get('client_id')} ({how}): token with {len(requested) - len(missing)}/{len(requested)} "
            f"scopes; {outcome}")


def _resources_line(resources: dict[str, dict[str, Any]]) -> str:
    parts = []
    for rtype, entry in resources.items():
        if entry.get("listed") is None:
            parts.append(f"{rtype} ?")
            continue
        marks = "".join(letter for letter, name in (("r", "read"), ("s", "search"), ("c", "create"),
                                                    ("u", "update")) if entry.get(name))
        parts.append(f"{rtype} {marks or '-'}")
    return ", ".join(parts)


def _yes_no(value: Any) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def _writes_line(writes: dict[str, dict[str, Any]]) -> str:
    """Per written type: may we write it (the probe), and does it take If-None-Exist (profiles before that
    field was checked have no `conditional_create` key: nothing is said rather than "unknown")."""
    parts = []
    for rtype, w in writes.items():
        detail = f"probe {w.get('probe')}"
        if "conditional_create" in w:
            detail += f", conditional create {_yes_no(w['conditional_create'])}"
        parts.append(f"{rtype} {'yes' if w.get('ok') else 'no'} ({detail})")
    return "; ".join(parts)


def _bundles_line(bundles: dict[str, Any]) -> str:
    if bundles.get("batch") is None and bundles.get("transaction") is None:
        return "unknown (no CapabilityStatement was read)"
    return f"batch {_yes_no(bundles.get('batch'))}, transaction {_yes_no(bundles.get('transaction'))}"


def _sync_line(sync: dict[str, Any], count_limit: int | None) -> str:
    strategy = sync.get("strategy") or {}
    export = [level for level, on in (sync.get("export") or {}).items() if on]
    return (f"initial {strategy.get('initial', '?')}, incremental {strategy.get('incremental', '?')}; "
            f"$export {'/'.join(export) or 'none'}; _count limit {count_limit if count_limit is not None else '?'}")


def _subscriptions_line(subscriptions: dict[str, Any]) -> str:
    """Whether changes can arrive by notification, and what IT would have to grant where they cannot."""
    if subscriptions.get("backport"):
        offered = f"rest-hook, {_n(len(subscriptions.get('topics') or []), 'topic')}"
    elif subscriptions.get("criteria"):
        offered = "rest-hook, plain R4 (by search criteria)"
    else:
        return "none offered (rest-hook Subscriptions, topic-based or plain R4): changes arrive by polling"
    if subscriptions.get("usable"):
        return f"{offered}: in use (changes arrive within seconds)"
    return f"{offered}: not in use until the backend client is granted system/Subscription.cru"


def render(name: str, profile: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(text, colour) pairs; colour None for plain lines."""
    ok = bool(profile.get("ok"))
    lines: list[tuple[str, str | None]] = [
        (f"connection {name}: {'OK' if ok else 'PROBLEMS'}  ({_n(len(profile.get('errors', [])), 'error')}, "
         f"{_n(len(profile.get('warnings', [])), 'warning')}; checked {profile.get('checked_at')})", OK if ok else BAD)]
    disc = profile.get("discovery") or {}
    if disc.get("source"):
        lines.append((f"  discovery   {disc['source']}, SMART {disc.get('smart_version')}, "
                      f"FHIR {disc.get('fhir_version', '?')}, token endpoint {disc.get('token_endpoint')}", None))
    if profile.get("backend"):
        lines.append((f"  backend     {_backend_line(profile['backend'])}", None))
    if profile.get("resources"):
        lines.append((f"  resources   {_resources_line(profile['resources'])}", None))
    if profile.get("writes"):
        lines.append((f"  writes      {_writes_line(profile['writes'])}", None))
    if isinstance(profile.get("bundles"), dict) and (disc.get("source") or any(
            v is not None for v in profile["bundles"].values())):  # not after a failed discovery: nothing was read
        lines.append((f"  bundles     {_bundles_line(profile['bundles'])}", None))
    if profile.get("sync"):
        lines.append((f"  sync        {_sync_line(profile['sync'], profile.get('count_limit'))}", None))
    if profile.get("subscriptions") and disc.get("source"):
        lines.append((f"  notify      {_subscriptions_line(profile['subscriptions'])}", None))
    lines += [(f"ERROR   {text}", BAD) for text in profile.get("errors", [])]
    lines += [(f"WARNING {text}", WARN) for text in profile.get("warnings", [])]
    return lines
