"""Wrong passwords are throttled per (user name, client) and per client, in PostgreSQL: every
app process sees the same counts, a lockout refuses even the right password until it ends,
another client is never locked out by someone else's guessing, and a success starts afresh.
Time is driven through the throttle's clock, never slept."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import ProgrammingError

from cqrs_core.auth import SignInThrottle, ThrottlePolicy, User, authenticate, hash_password
from cqrs_core.cli import main
from cqrs_core.config import get_settings
from cqrs_core.db import make_engine

USERS = {"root": {"password_hash": hash_password("right-password"), "role": "admin"}}
POLICY = ThrottlePolicy(max_failures=5, client_max_failures=20, window_seconds=900, lockout_seconds=30,
                        max_lockout_seconds=900)
ATTACKER, ADMIN_DESK = "203.0.113.7", "198.51.100.20"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def two_processes(db_url, clock):
    """Two throttles on engines of their own, as two app processes have."""
    engines = [make_engine(db_url, pool_size=1), make_engine(db_url, pool_size=1)]
    yield [SignInThrottle(e, POLICY, clock=clock) for e in engines]
    for e in engines:
        e.dispose()


def sign_in(throttle: SignInThrottle, name: str, password: str, client: str | None) -> User | str:
    """What the app's sign-in callback does: the user, or the sentence shown."""
    wait = throttle.admit(name, client)
    if wait is not None:
        return f"Too many failed sign-ins; try again in {wait} s."
    user = authenticate(USERS, name, password)
    if user is None:
        return "Unknown user name or wrong password."
    throttle.succeeded(name, client)
    return user


def test_five_wrong_passwords_lock_that_user_and_client_in_every_process(two_processes, clock):
    first, second = two_processes
    for _ in range(5):
        assert sign_in(first, "root", "guess", ATTACKER) == "Unknown user name or wrong password."

    # The other process refuses too, the right password included, without checking it.
    assert sign_in(second, "root", "right-password", ATTACKER) == "Too many failed sign-ins; try again in 30 s."
    clock.advance(29)
    assert sign_in(first, "root", "right-password", ATTACKER) == "Too many failed sign-ins; try again in 1 s."
    clock.advance(1)
    assert sign_in(second, "root", "right-password", ATTACKER) == User("root", "admin")


def test_the_same_admin_signs_in_from_another_client_while_one_client_is_locked_out(two_processes):
    first, second = two_processes
    for _ in range(6):
        sign_in(first, "root", "guess", ATTACKER)
    assert sign_in(first, "root", "right-password", ATTACKER).startswith("Too many failed sign-ins")

    assert sign_in(second, "root", "right-password", ADMIN_DESK) == User("root", "admin")
    assert sign_in(second, "root", "right-password", None) == User("root", "admin")  # loopback


def test_lockouts_double_with_each_further_failure_up_to_the_cap(two_processes, clock):
    first, _ = two_processes
    waits = []
    for _ in range(5):
        sign_in(first, "root", "guess", ATTACKER)
    for _ in range(7):
        waits.append(first.admit("root", ATTACKER))  # locked: refused, not counted
        clock.advance(waits[-1])
        assert sign_in(first, "root", "guess", ATTACKER) == "Unknown user name or wrong password."

    assert waits == [30, 60, 120, 240, 480, 900, 900]


def test_a_success_starts_the_count_afresh(two_processes):
    first, second = two_processes
    for _ in range(4):
        sign_in(first, "root", "guess", ATTACKER)
    assert sign_in(second, "root", "right-password", ATTACKER) == User("root", "admin")

    for _ in range(4):  # four more: still below five since the success
        assert sign_in(first, "root", "guess", ATTACKER) == "Unknown user name or wrong password."
    assert sign_in(second, "root", "right-password", ATTACKER) == User("root", "admin")


def test_failures_are_forgotten_after_a_quiet_window(two_processes, clock):
    first, _ = two_processes
    for _ in range(4):
        sign_in(first, "root", "guess", ATTACKER)
    clock.advance(901)

    for _ in range(4):
        assert sign_in(first, "root", "guess", ATTACKER) == "Unknown user name or wrong password."
    assert first.admit("root", ATTACKER) is None  # the fifth attempt is still checked


def test_one_client_trying_many_user_names_is_locked_out_as_a_client(two_processes):
    first, second = two_processes
    for i in range(20):
        assert sign_in(first, f"user{i}", "guess", ATTACKER) == "Unknown user name or wrong password."

    assert sign_in(second, "someone-new", "guess", ATTACKER).startswith("Too many failed sign-ins")
    assert sign_in(second, "root", "right-password", ADMIN_DESK) == User("root", "admin")


def test_unknown_and_known_user_names_are_throttled_alike(two_processes):
    first, _ = two_processes
    for name in ("root", "nobody"):
        for _ in range(5):
            sign_in(first, name, "guess", ATTACKER)
        assert sign_in(first, name, "guess", ATTACKER) == "Too many failed sign-ins; try again in 30 s."


def test_the_unlock_command_lets_the_user_sign_in_again(db_url, two_processes, monkeypatch, capsys):
    first, _ = two_processes
    for _ in range(5):
        sign_in(first, "root", "guess", ATTACKER)
    monkeypatch.setenv("CQRS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        # The CLI reads the wall clock: the lockout written at the test clock's time must still be on.
        with first.engine.begin() as conn:
            conn.execute(text("UPDATE sign_in_throttle SET locked_until = now() + interval '1 hour'"
                              " WHERE locked_until IS NOT NULL"))
        assert main(["auth", "lockouts"]) == 0
        assert f"user 'root' from {ATTACKER}: 5 failed sign-ins" in capsys.readouterr().out
        assert main(["auth", "lockouts", "--json"]) == 0
        [locked] = json.loads(capsys.readouterr().out)
        assert (locked["scope"], locked["user_name"], locked["client"], locked["failures"]) == ("user", "root", ATTACKER, 5)

        assert main(["auth", "unlock", "root"]) == 0
        assert capsys.readouterr().out == "Cleared 1 sign-in record(s) for 'root'.\n"
        assert main(["auth", "lockouts"]) == 0
        assert capsys.readouterr().out == "No sign-in lockouts.\n"
    finally:
        get_settings.cache_clear()
    assert sign_in(first, "root", "right-password", ATTACKER) == User("root", "admin")


def test_only_the_app_role_may_touch_the_throttle_table(engine):
    with engine.connect() as conn:
        grants = set(conn.execute(text(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants"
            " WHERE table_name = 'sign_in_throttle' AND grantee <> current_user")).all())

    assert grants == {("cqrs_app", p) for p in ("SELECT", "INSERT", "UPDATE", "DELETE")}


def test_attempts_submitted_at_once_from_many_sessions_get_no_more_than_the_limit(db_url, clock):
    engine = make_engine(db_url, pool_size=10)
    throttle = SignInThrottle(engine, POLICY, clock=clock)
    start = threading.Barrier(12)

    def attempt(_: int) -> int | None:
        start.wait()
        return throttle.admit("root", ATTACKER)

    try:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(attempt, range(12)))
    finally:
        engine.dispose()

    assert answers.count(None) == 5  # the rest were refused without a password check


def engine_as(db_url: str, role: str):
    engine = make_engine(db_url, pool_size=1)

    @event.listens_for(engine, "connect")
    def take_role(dbapi_conn, _record) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET ROLE {role}")

    return engine


def test_the_app_role_runs_the_throttle_and_the_read_only_role_cannot_see_it(db_url, clock):
    app, reader = engine_as(db_url, "cqrs_app"), engine_as(db_url, "cqrs_reader")
    try:
        throttle = SignInThrottle(app, POLICY, clock=clock)
        for _ in range(5):
            assert throttle.admit("root", ATTACKER) is None
        assert throttle.admit("root", ATTACKER) == 30
        assert throttle.unlock("root") == 1
        throttle.succeeded("root", ATTACKER)

        with pytest.raises(ProgrammingError, match="permission denied"), reader.connect() as conn:
            conn.execute(text("SELECT count(*) FROM sign_in_throttle"))
    finally:
        app.dispose()
        reader.dispose()


def test_unlock_without_a_user_or_a_client_says_what_to_name(capsys):
    assert main(["auth", "unlock"]) == 2
    assert capsys.readouterr().err == "cqrs-console: name a USER to unlock, or a --client address, or both\n"
