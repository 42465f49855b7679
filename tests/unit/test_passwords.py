import subprocess
import sys

import bcrypt
import pytest

from cqrs_core.app.auth import (
    LOCAL_ADMIN,
    PasswordTooLongError,
    User,
    as_configured,
    authenticate,
    dummy_hash,
    hash_cost,
    hash_password,
)

USERS = {
    "alice": {"password_hash": hash_password("correct horse"), "role": "researcher"},
    "mallory": {"password_hash": "not-a-bcrypt-hash", "role": "admin"},
    "eve": {"password_hash": hash_password("pw12345678"), "role": "superuser"},
}


def test_right_password_signs_in_with_the_configured_role():
    assert authenticate(USERS, "alice", "correct horse") == User("alice", "researcher")


def test_wrong_password_unknown_user_bad_hash_and_unknown_role_are_refused():
    assert authenticate(USERS, "alice", "wrong") is None
    assert authenticate(USERS, "nobody", "correct horse") is None
    assert authenticate(USERS, "alice", "") is None
    assert authenticate(USERS, "mallory", "anything") is None
    assert authenticate(USERS, "eve", "pw12345678") is None


def test_local_admin_can_do_everything_and_analyst_only_reads():
    assert LOCAL_ADMIN.can("operator") and LOCAL_ADMIN.can("researcher")
    analyst = User("ann", "analyst")
    assert analyst.can("analyst") and not analyst.can("researcher") and not analyst.can("operator")


def test_hash_password_cli_prints_a_hash_that_verifies():
    out = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "hash-password", "--stdin"],
        input="s3cret-pass\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert bcrypt.checkpw(b"s3cret-pass", out.encode())
    short = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "hash-password", "--stdin"],
        input="short\n",
        capture_output=True,
        text=True,
    )
    assert short.returncode == 2 and "at least 8" in short.stderr


def cost_of_checks(monkeypatch) -> list[int]:
    """The bcrypt cost of every hash `authenticate` checks a password against, in order."""
    costs: list[int] = []
    real_checkpw = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        costs.append(hash_cost(hashed.decode()))
        return real_checkpw(password, hashed)

    monkeypatch.setattr("cqrs_core.app.auth.bcrypt.checkpw", checkpw)
    return costs


def test_the_dummy_hash_has_the_cost_of_the_configured_hashes():
    real = {"alice": {"password_hash": hash_password("correct horse"), "role": "researcher"}}
    cheap = {
        "bob": {"password_hash": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode(), "role": "analyst"}
    }

    assert hash_cost(real["alice"]["password_hash"]) == 12
    assert hash_cost(dummy_hash(real).decode()) == 12
    assert hash_cost(dummy_hash(cheap).decode()) == 4
    assert hash_cost(dummy_hash({**real, **cheap}).decode()) == 12  # the dearest configured one
    assert hash_cost(dummy_hash({}).decode()) == 12  # hash-password's cost
    assert not bcrypt.checkpw(b"dummy", dummy_hash(real))  # well formed, matches nothing


def test_an_unknown_user_costs_as_much_bcrypt_work_as_a_known_one(monkeypatch):
    costs = cost_of_checks(monkeypatch)

    assert authenticate(USERS, "alice", "wrong") is None
    assert authenticate(USERS, "nobody", "correct horse") is None
    assert authenticate(USERS, "alice", "") is None
    assert authenticate(USERS, "mallory", "anything") is None  # a malformed hash

    assert costs == [12, 12, 12, 12]


def test_a_removed_user_or_one_with_an_unknown_role_is_no_longer_configured_and_a_new_role_applies():
    alice = User("alice", "researcher")

    assert as_configured(USERS, alice) is alice
    assert as_configured({"alice": {**USERS["alice"], "role": "analyst"}}, alice) == User("alice", "analyst")
    assert as_configured({k: v for k, v in USERS.items() if k != "alice"}, alice) is None
    assert as_configured({"alice": {**USERS["alice"], "role": "superuser"}}, alice) is None
    assert as_configured({"alice": {"role": "researcher"}}, alice) is None  # hash removed


@pytest.mark.parametrize("password", ["p" * 73, "é" * 37])  # 73 and 74 bytes
def test_hash_password_cli_refuses_more_than_72_bytes_in_one_line(password):
    run = subprocess.run(
        [sys.executable, "-m", "cqrs_core", "hash-password", "--stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
    )

    assert run.returncode == 2
    assert run.stderr == "cqrs-console: choose a password of at most 72 bytes (bcrypt ignores the rest)\n"
    assert run.stdout == ""


def test_hash_password_accepts_exactly_72_bytes():
    assert bcrypt.checkpw(("p" * 72).encode(), hash_password("p" * 72).encode())
    with pytest.raises(PasswordTooLongError):
        hash_password("p" * 73)
