import subprocess
import sys

import bcrypt

from cqrs_core.auth import LOCAL_ADMIN, User, authenticate, hash_password

USERS = {"alice": {"password_hash": hash_password("correct horse"), "role": "researcher"},
         "mallory": {"password_hash": "not-a-bcrypt-hash", "role": "admin"},
         "eve": {"password_hash": hash_password("pw12345678"), "role": "superuser"}}


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
    out = subprocess.run([sys.executable, "-m", "cqrs_core", "hash-password", "--stdin"], input="s3cret-pass\n",
                         capture_output=True, text=True, check=True).stdout.strip()
    assert bcrypt.checkpw(b"s3cret-pass", out.encode())
    short = subprocess.run([sys.executable, "-m", "cqrs_core", "hash-password", "--stdin"], input="short\n",
                           capture_output=True, text=True)
    assert short.returncode == 2 and "at least 8" in short.stderr
