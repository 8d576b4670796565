"""Local admin accounts for admin pages and the CLI; passwords hashed with Argon2id."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from sqlmodel import Session, select

from prm.clock import Clock
from prm.errors import ValidationError
from prm.models import LocalAdmin
from prm.permissions import Role, parse_role

_hasher = PasswordHasher()
ADMIN_ROLES = (Role.IT_ADMIN, Role.PRACTICE_MANAGER)


def add(session: Session, clock: Clock, username: str, password: str, role: str = "it_admin") -> LocalAdmin:
    if not username.isascii() or not username.replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise ValidationError("username must be ASCII letters, digits, '.', '-' or '_'")
    if len(password) < 12:
        raise ValidationError("password must be at least 12 characters")
    if parse_role(role) not in ADMIN_ROLES:
        raise ValidationError("a local account is for it_admin or practice_manager")
    if session.exec(select(LocalAdmin).where(LocalAdmin.username == username)).first():
        raise ValidationError(f"account {username!r} exists already")
    row = LocalAdmin(username=username, password_hash=_hasher.hash(password), role=role, created_at=clock())
    session.add(row)
    session.flush()
    return row


def authenticate(session: Session, username: str, password: str) -> LocalAdmin | None:
    row = session.exec(select(LocalAdmin).where(LocalAdmin.username == username)).first()
    if row is None:
        _hasher.hash(password)  # spend the same time, so timing does not reveal which usernames exist
        return None
    try:
        _hasher.verify(row.password_hash, password)
    except VerificationError:
        return None
    return row
