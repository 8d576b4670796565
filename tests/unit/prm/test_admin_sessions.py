"""Admin sessions: only a token hash is stored, idle and absolute limits end them, sign-out too, failures throttle."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from prm import accounts, admin_sessions
from prm.admin_sessions import SessionPolicy
from prm.clock import Clock, parse_instant
from prm.config import Settings
from prm.db import Database
from prm.errors import SignInRefused
from prm.models import AdminSession, AuditRecord
from tests.support.settings import make_settings

T0 = parse_instant("2026-11-20T12:00:00Z")
PASSWORD = "correct horse battery staple"
IP = "192.0.2.10"


def at(instant: datetime) -> Clock:
    return lambda: instant


@pytest.fixture
def policy(settings: Settings) -> SessionPolicy:
    return SessionPolicy.from_settings(settings)


@pytest.fixture
def admin(database: Database, settings: Settings) -> str:
    with database.session() as session:
        accounts.add(session, settings.clock, "it.lead", PASSWORD)
    return "it.lead"


def sign_in(database: Database, when: datetime, password: str = PASSWORD, source: str = IP,
            username: str = "it.lead", previous: str | None = None) -> str:
    """Sign in; on refusal the audit record still commits (as the view does), and the error is re-raised."""
    refused: SignInRefused | None = None
    with database.session() as session:
        try:
            token, _ = admin_sessions.sign_in(session, at(when), username, password, source, previous)
        except SignInRefused as exc:
            refused = exc
    if refused is not None:
        raise refused
    return token


def resolve(database: Database, policy: SessionPolicy, token: str, when: datetime) -> str | None:
    with database.session() as session:
        principal = admin_sessions.resolve(session, at(when), policy, token)
    return principal.username if principal else None


def audits(database: Database, action: str) -> list[AuditRecord]:
    with database.session() as session:
        return list(session.exec(select(AuditRecord).where(AuditRecord.action == action)))


def test_defaults_come_from_settings(tmp_path: Path) -> None:
    policy = SessionPolicy.from_settings(make_settings("sqlite://", tmp_path, admin_idle_minutes=5,
                                                       admin_absolute_hours=1))
    assert policy == SessionPolicy(idle=timedelta(minutes=5), absolute=timedelta(hours=1))


def test_only_the_token_hash_is_stored(database: Database, policy: SessionPolicy, admin: str) -> None:
    token = sign_in(database, T0)
    assert len(token) >= 43  # 32 random bytes, url-safe base64
    with database.session() as session:
        row = session.exec(select(AdminSession)).one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest() and token not in row.token_hash
    assert resolve(database, policy, token, T0) == admin
    assert resolve(database, policy, "not-a-token", T0) is None
    [record] = audits(database, "admin.sign_in")
    assert record.outcome == "success" and record.actor == admin and record.actor_kind == "admin"


def test_idle_timeout_counts_from_the_last_request(database: Database, policy: SessionPolicy, admin: str) -> None:
    assert policy.idle == timedelta(minutes=30)
    token = sign_in(database, T0)
    assert resolve(database, policy, token, T0 + timedelta(minutes=29)) == admin
    assert resolve(database, policy, token, T0 + timedelta(minutes=58)) == admin  # 29 min after the last request
    assert resolve(database, policy, token, T0 + timedelta(minutes=88)) is None  # 30 min idle
    assert resolve(database, policy, token, T0 + timedelta(minutes=59)) is None  # ended for good
    with database.session() as session:
        assert session.exec(select(AdminSession)).one().ended_at == T0 + timedelta(minutes=88)


def test_absolute_timeout_ends_even_an_active_session(database: Database, policy: SessionPolicy, admin: str) -> None:
    token = sign_in(database, T0)
    for minutes in range(20, 12 * 60, 20):
        assert resolve(database, policy, token, T0 + timedelta(minutes=minutes)) == admin
    assert resolve(database, policy, token, T0 + timedelta(hours=12)) is None


def test_sign_out_ends_the_session(database: Database, policy: SessionPolicy, admin: str) -> None:
    token = sign_in(database, T0)
    with database.session() as session:
        ended = admin_sessions.end(session, at(T0 + timedelta(minutes=1)), token)
    assert ended is not None and ended.username == admin
    assert resolve(database, policy, token, T0 + timedelta(minutes=2)) is None
    with database.session() as session:
        assert admin_sessions.end(session, at(T0), token) is None
    assert [r.actor for r in audits(database, "admin.sign_out")] == [admin]


def test_a_new_sign_in_gets_a_new_token_and_ends_the_old(database: Database, policy: SessionPolicy,
                                                         admin: str) -> None:
    first = sign_in(database, T0)
    second = sign_in(database, T0, previous=first)
    assert first != second
    assert resolve(database, policy, first, T0) is None
    assert resolve(database, policy, second, T0) == admin


def test_wrong_password_and_unknown_user_look_the_same(database: Database, admin: str) -> None:
    messages = []
    for username, password in ((admin, "wrong password!!"), ("nobody", PASSWORD), (admin, "")):
        with pytest.raises(SignInRefused) as caught:
            sign_in(database, T0, password=password, username=username)
        messages.append(str(caught.value))
        assert caught.value.reason == "wrong_credentials"
    assert set(messages) == {"wrong username or password"}
    failures = audits(database, "admin.sign_in")
    assert [r.outcome for r in failures] == ["failure"] * 3
    assert all("wrong password" not in (r.detail or "") and PASSWORD not in (r.detail or "") for r in failures)
    assert failures[0].detail == f"wrong_credentials from {IP}"


def test_five_failures_throttle_that_username_from_that_address(database: Database, admin: str) -> None:
    for minute in range(5):
        with pytest.raises(SignInRefused):
            sign_in(database, T0 + timedelta(minutes=minute), password="not the password")
    with pytest.raises(SignInRefused) as caught:
        sign_in(database, T0 + timedelta(minutes=6))  # even the right password
    assert caught.value.reason == "throttled"
    assert sign_in(database, T0 + timedelta(minutes=6), source="198.51.100.7")  # another address is not blocked
    # The oldest failure ages out of the 15-minute window: one more try is allowed.
    assert sign_in(database, T0 + timedelta(minutes=15, seconds=1))
    throttled = [r for r in audits(database, "admin.sign_in") if (r.detail or "").startswith("throttled")]
    assert len(throttled) == 1 and throttled[0].outcome == "failure"


def test_a_success_resets_the_count(database: Database, admin: str) -> None:
    for minute in range(4):
        with pytest.raises(SignInRefused):
            sign_in(database, T0 + timedelta(minutes=minute), password="not the password")
    sign_in(database, T0 + timedelta(minutes=5))
    for minute in range(6, 10):
        with pytest.raises(SignInRefused) as caught:
            sign_in(database, T0 + timedelta(minutes=minute), password="not the password")
        assert caught.value.reason == "wrong_credentials"
    assert sign_in(database, T0 + timedelta(minutes=11))
