"""`cqrs-console hash-password`: a bcrypt hash to paste into .streamlit/secrets.toml.
`cqrs-console auth lockouts|unlock`: see and clear sign-in lockouts (password mode).
`cqrs-console auth sign-out USER`: end every session of a user (password mode)."""

from __future__ import annotations

import getpass
import json
import sys

from cqrs_core.app.auth import MAX_PASSWORD_BYTES, SignInThrottle, hash_password
from cqrs_core.cli import fail


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "hash-password", help="print a bcrypt hash for a [users.NAME] entry in .streamlit/secrets.toml"
    )
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(handler=run)

    auth = subparsers.add_parser("auth", help="sign-in lockouts after wrong passwords (password mode)")
    actions = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    listing = actions.add_parser("lockouts", help="list the user names and clients locked out now")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=run_lockouts)
    unlock = actions.add_parser(
        "unlock",
        help="let USER sign in again (from every client, or from --client only); "
        "with --client alone, clear that client and every user name tried from it",
    )
    unlock.add_argument("user", nargs="?", help="the user name to unlock")
    unlock.add_argument(
        "--client", help="the client address as the lockout lists it (localhost for loopback)"
    )
    unlock.set_defaults(handler=run_unlock)
    sign_out = actions.add_parser(
        "sign-out", help="end every session of USER on every app process (a stolen cookie included)"
    )
    sign_out.add_argument("user", help="the user name whose sessions to end")
    sign_out.set_defaults(handler=run_sign_out)


def run(args) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass("Password: ")
    if len(password) < 8:
        return fail("choose a password of at least 8 characters")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        return fail(f"choose a password of at most {MAX_PASSWORD_BYTES} bytes (bcrypt ignores the rest)")
    print(hash_password(password))
    return 0


def run_lockouts(args) -> int:
    locked = _with_throttle(lambda throttle: throttle.lockouts())
    if args.json:
        print(json.dumps([{**row, "locked_until": row["locked_until"].isoformat()} for row in locked]))
    elif not locked:
        print("No sign-in lockouts.")
    for row in [] if args.json else locked:
        who = (
            f"user {row['user_name']!r} from {row['client']}"
            if row["scope"] == "user"
            else f"client {row['client']}"
        )
        print(
            f"{who}: {row['failures']} failed sign-ins, locked until {row['locked_until']:%Y-%m-%d %H:%M:%S %Z}"
        )
    return 0


def run_unlock(args) -> int:
    if args.user is None and args.client is None:
        return fail("name a USER to unlock, or a --client address, or both")
    removed = _with_throttle(lambda throttle: throttle.unlock(args.user, args.client))
    target = " ".join(
        part for part in (args.user and repr(args.user), args.client and f"from {args.client}") if part
    )
    print(
        f"Cleared {removed} sign-in record(s) for {target}." if removed else f"Nothing to clear for {target}."
    )
    return 0


def run_sign_out(args) -> int:
    from cqrs_core.app.sessions import SessionStore

    ended = _with_engine(lambda engine: SessionStore(engine, 0, "").revoke_user(args.user))
    print(f"Ended {ended} session(s) of {args.user!r}." if ended else f"No live session of {args.user!r}.")
    return 0


def _with_throttle(action):
    return _with_engine(lambda engine: action(SignInThrottle(engine)))


def _with_engine(action):
    from cqrs_core.cli.database import database_url
    from cqrs_core.infra.config import get_settings
    from cqrs_core.infra.db import make_engine

    engine = make_engine(database_url(get_settings()), pool_size=1)
    try:
        return action(engine)
    finally:
        engine.dispose()
