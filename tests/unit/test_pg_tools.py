"""PostgreSQL's programs and what the backup feeds them (no database: the programs only say their
version, and the rest is text)."""

import os

import pytest

from cqrs_core.infra import pg_tools
from cqrs_core.infra.rate_limit import lease_size
from cqrs_core.ops.backup import portable_schema_line


def test_a_url_becomes_a_connection_string_without_its_password_which_travels_in_the_environment():
    target = pg_tools.connection(
        "postgresql+psycopg2://console:s3cret%27x@db.example.org:6432/research?sslmode=require&application_name=a'b"
    )
    assert "s3cret" not in target.dbname and "s3cret" not in " ".join(target.args())
    assert target.env["PGPASSWORD"] == "s3cret'x"
    assert target.dbname == (
        "host='db.example.org' port='6432' user='console' dbname='research' sslmode='require' application_name='a\\'b'"
    )


def test_a_socket_url_keeps_its_directory_and_another_database_can_be_named():
    target = pg_tools.connection(
        "postgresql+psycopg2://postgres@/console?host=/tmp/sock&port=5432", "postgres"
    )
    assert target.dbname == "user='postgres' dbname='postgres' host='/tmp/sock' port='5432'"
    assert target.env.get("PGPASSWORD") == os.environ.get("PGPASSWORD")  # none added


def test_column_options_postgresql_does_not_define_are_left_out_of_the_schema():
    line = "ALTER TABLE ONLY public.events ALTER COLUMN actor SET (pg_attver=27000352);\n"
    assert portable_schema_line(line) is None
    mixed = "ALTER TABLE ONLY public.events ALTER COLUMN actor SET (pg_attver=1,n_distinct=5);\n"
    assert (
        portable_schema_line(mixed)
        == "ALTER TABLE ONLY public.events ALTER COLUMN actor SET (n_distinct=5);\n"
    )
    other = "CREATE TABLE public.events (\n"
    assert portable_schema_line(other) == other


@pytest.mark.parametrize(
    ("rate", "burst", "lease"),
    [(200.0, 400, 20), (50.0, 200, 5), (0.5, 2, 1), (1e9, 10**9, 10**8), (1000.0, 30, 3)],
)
def test_a_lease_is_a_tenth_of_a_second_of_the_rate_and_at_most_a_tenth_of_the_burst(rate, burst, lease):
    assert lease_size(rate, burst) == lease
