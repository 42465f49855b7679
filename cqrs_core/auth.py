"""Who is using the console. `none` mode: one local admin (the embedded demo). `password` mode:
users listed in `.streamlit/secrets.toml` with bcrypt hashes and a role:

    [users.alice]
    password_hash = "$2b$12$..."   # cqrs-console hash-password
    role = "researcher"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import bcrypt

from cqrs_core.commands import ROLES


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def can(self, role_needed: str) -> bool:
        return self.role == "admin" or self.role == role_needed or role_needed == "analyst"


LOCAL_ADMIN = User("admin", "admin")


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def authenticate(users: Mapping[str, Any], name: str, password: str) -> User | None:
    """The user if `password` matches the stored bcrypt hash, else None (same answer for an
    unknown user and a wrong password)."""
    entry = users.get(name) if name else None
    if not entry or not password:
        bcrypt.checkpw(b"x", _DUMMY_HASH)  # spend the same time either way
        return None
    stored = str(entry.get("password_hash", "")).encode()
    try:
        ok = bcrypt.checkpw(password.encode()[:72], stored)
    except ValueError:  # a malformed hash in secrets.toml
        return None
    role = entry.get("role", "analyst")
    if not ok or role not in ROLES:
        return None
    return User(name, role)


_DUMMY_HASH = bcrypt.hashpw(b"dummy", bcrypt.gensalt(rounds=4))
