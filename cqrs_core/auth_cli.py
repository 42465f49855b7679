"""`cqrs-console hash-password`: a bcrypt hash to paste into .streamlit/secrets.toml."""

from __future__ import annotations

import getpass
import sys

from cqrs_core.auth import hash_password


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "hash-password", help="print a bcrypt hash for a [users.NAME] entry in .streamlit/secrets.toml"
    )
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(handler=run)


def run(args) -> int:
    password = sys.stdin.readline().rstrip("\n") if args.stdin else getpass.getpass("Password: ")
    if len(password) < 8:
        print("cqrs-console: choose a password of at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0
