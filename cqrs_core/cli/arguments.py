"""Argument types the verbs share: argparse refuses bad values with its usage line and exit 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def bounded_float(most: float) -> Callable[[str], float]:
    """An argparse type: a number greater than 0 and at most `most`. `inf`, `nan` and huge values
    are refused here, with argparse's usage line and exit 2, rather than as an OverflowError deep
    in the load generator (`math.floor(inf)`, a timedelta of 1e300 days)."""

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
        if not math.isfinite(number) or not 0 < number <= most:
            raise argparse.ArgumentTypeError(f"must be a number greater than 0 and at most {most:,g}")
        return number

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def server_url(value: str) -> str:
    """An argparse type: a PostgreSQL URL for the console's driver. `postgresql://` and
    `postgres://` (what psql and most tools print) mean psycopg2 here: SQLAlchemy would otherwise
    pick psycopg 3, which the console does not use. Another driver is refused."""
    for plain in ("postgresql://", "postgres://"):
        if value.startswith(plain):
            return "postgresql+psycopg2://" + value[len(plain) :]
    if not value.startswith("postgresql+psycopg2://"):
        raise argparse.ArgumentTypeError(
            "must be a PostgreSQL URL: postgresql://user@host:port/database (or postgresql+psycopg2://…)"
        )
    return value


server_url.__name__ = "URL"  # argparse names the type in its messages
