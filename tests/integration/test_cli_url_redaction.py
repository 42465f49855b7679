"""`cqrs-console db url` and `migrate` print the database URL without a password given as a
query parameter (libpq takes `password` there as well as in the user info)."""

from sqlalchemy.engine import make_url

from cqrs_core.cli import main

PASSWORD = "s3cret-in-the-query-string"


def with_query_password(url: str) -> str:
    return make_url(url).update_query_dict({"password": PASSWORD}).render_as_string(hide_password=False)


def test_db_url_hides_a_query_string_password(use_database, capsys):
    use_database(
        "postgresql+psycopg2://alice@db.example/research?sslpassword=s3cret-key&password=" + PASSWORD
    )

    assert main(["db", "url"]) == 0

    out = capsys.readouterr().out
    assert "s3cret" not in out
    assert out.strip() == "postgresql+psycopg2://alice@db.example/research?password=***&sslpassword=***"


def test_migrate_output_hides_a_query_string_password(empty_db_url, use_database, capsys):
    use_database(with_query_password(empty_db_url))

    assert main(["migrate"]) == 0  # connects: libpq takes the password from the query string
    assert main(["migrate"]) == 0

    out = capsys.readouterr().out
    assert out.count("password=***") == 2 and PASSWORD not in out
